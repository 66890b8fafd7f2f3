"""Run one training job in its own process; the SIGKILL test kills this process.

Usage: python job_runner.py DB_URL ARTIFACTS SUITE JOB_ID WORKER LEASE_SECONDS TRAIN_JSON
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    from storage.db import make_engine
    from storage.suite import load_suite
    from tests.training.fast import LENIENT_GATE, fast_eval_config
    from workers.training.config import TrainConfig
    from workers.training.job import run_training_job

    db_url, artifacts, suite_path, job_id, worker, lease, train_json = argv
    engine = make_engine(db_url)
    out = run_training_job(
        int(job_id), engine=engine, redis_client=None, key_prefix="adaptd:",
        artifacts_dir=Path(artifacts), suite=load_suite(suite_path), worker_id=worker,
        lease_seconds=int(lease), train_config=TrainConfig.model_validate_json(train_json),
        eval_config=fast_eval_config(), gate_config=LENIENT_GATE,
        device="cpu",
    )
    print(json.dumps({"status": out.status, "version": out.version, "error": out.error}))
    return 0 if out.status in ("promoted", "rejected") else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
