"""Serving bench: promotion-to-served latency and the app's generation rate through vLLM.

1. Promotion to served, over ``--promotions`` promotions on one running vLLM replica: the
   real promotion transaction (``promote.finalize``, two-step) then one serving-sync round
   (load, confirm with ``/v1/models``, route): the rollout's ``requested_at`` ->
   ``finished_at``, what ``adaptd_serving_promotion_seconds`` records.
2. The naive way, side by side: restart the server with the new adapter as a static
   ``--lora-modules`` entry, promotion to the first ``/v1/models`` that lists it
   (``--naive`` restarts; each costs a whole server start).
3. The simulated app's generation step (a chunk of requests over the suite's tasks, one
   generate call per task, sampling as the simulator does) in requests/s: through vLLM's
   completions API (routed name + prompt contract) against in-process PEFT generation.

    python -m bench.serving [--promotions 20] [--naive 3] [--out PATH]

Needs the vLLM environment (``make vllm`` or ``ADAPTD_VLLM_VENV``). Prints a table and
writes JSON to ``--out`` (default ``.adaptd/bench/serving.json``).
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import machine, print_table
from daemon.settings import Settings
from tests.support.load import percentile

ROOT = Path(__file__).resolve().parents[1]

SUITE = "builtin:festive-zh"


def _train_one(work: Path, suite: Any) -> tuple[Any, Path]:
    """A database and one trained version of the suite's shared adapter (routed at once)."""
    from sqlmodel import Session

    from storage.crud import create_job, sync_suite
    from storage.db import make_engine, migrate
    from workers.training.config import EvalConfig, GateConfig, TrainConfig
    from workers.training.job import run_training_job

    url = f"sqlite:///{work / 'bench.db'}"
    migrate(url)
    engine = make_engine(url)
    with Session(engine) as session:
        sync_suite(session, suite=suite)
        job = create_job(session, adapter="shared", kind="retrain", params={})
        session.commit()
        job_id = int(job.id or 0)
    out = run_training_job(
        job_id, engine=engine, redis_client=None, key_prefix="bench:",
        artifacts_dir=work / "artifacts", suite=suite, worker_id="bench",
        train_config=TrainConfig(steps=6, batch_examples=8, checkpoint_every=6,
                                 affinity_measurements=0, audit={"rounds": 0}),
        eval_config=EvalConfig(prompts_per_task=4, samples_per_prompt=1, max_new_tokens=16,
                               general_examples=4),
        gate_config=GateConfig(tolerance={"high": 1.0, "medium": 1.0, "low": 1.0},
                               targeted_tolerance=1.0, bootstrap_tolerance=1.0,
                               general_loss_tolerance=100.0), device="cpu")
    if out.status != "promoted":
        raise SystemExit(f"bench: training the first version failed: {out}")
    return engine, work / "artifacts" / "shared" / "v1"


def two_step(engine: Any, work: Path, source: Path, url: str, n: int, tok: Any,
             tasks: list[str]) -> list[float]:
    """Promotion to routed through the serving sync, ``n`` times (versions 2..n+1)."""
    from sqlmodel import Session, select

    from storage.models import ServingRollout
    from tests.serving.support import install_version, promote, sync

    seconds = []
    for version in range(2, n + 2):
        row = install_version(engine, work / "artifacts", "shared", version, source)
        promote(engine, row, tasks, tok, two_step=True)
        result = sync(engine, url, grace_s=0.0)
        if result.routed != [f"shared@{version}"]:
            raise SystemExit(f"bench: shared@{version} was not routed: {result.to_dict()}")
        with Session(engine) as session:
            rollout = session.execute(select(ServingRollout).where(
                ServingRollout.version == version)).scalars().one()
            seconds.append(float(rollout.finished_at or 0) - rollout.requested_at)
    return seconds


def naive(venv: Path, base: Path, source: Path, n: int, log: Path) -> list[float]:
    """Restart the server with the new adapter as a static LoRA module, ``n`` times."""
    from daemon.vllm import VLLMServer
    from workers.serving.backends import VLLMBackend

    seconds = []
    server: VLLMServer | None = None
    for i in range(n):
        name = f"naive-v{i + 1}"
        t0 = time.monotonic()
        if server is not None:
            server.stop()
        server = VLLMServer(venv, base, log_path=log,
                            extra_args=["--lora-modules", f"{name}={source}"])
        server.start(wait=True)
        while name not in VLLMBackend(server.url).lora_names():
            time.sleep(0.2)
        seconds.append(time.monotonic() - t0)
    if server is not None:
        server.stop()
    return seconds


def app_rate(suite: Any, base_root: Path, url: str, routes: dict[str, Any], chunks: int,
             chunk: int) -> dict[str, float]:
    """Requests/s of the simulator's generation step, through vLLM and in-process."""
    from daemon.sim.app import EngineGenerator
    from workers.training.generate import AdapterServer

    rng = random.Random(3)
    tasks = sorted(suite.tasks)
    work = [[(t := rng.choice(tasks), suite.prompt_for(t, rng)) for _ in range(chunk)]
            for _ in range(chunks)]
    engine_gen = EngineGenerator(url)
    local = AdapterServer(suite, base_root, device="cpu")
    rates = {}
    for label in ("vllm", "inprocess"):
        t0 = time.monotonic()
        for requests in work:
            by_task: dict[str, list[str]] = {}
            for task, prompt in requests:
                by_task.setdefault(task, []).append(prompt)
            for task, prompts in sorted(by_task.items()):
                route = routes[task]
                seed = rng.randrange(2**31)
                if label == "vllm":
                    engine_gen.generate_routed(task, prompts, route, seed=seed)
                else:
                    local.generate(task, prompts, adapter=route["adapter"],
                                   version=route["version"], path=Path(route["path"]),
                                   sha256=route["sha256"], seed=seed)
        rates[label] = chunks * chunk / (time.monotonic() - t0)
    return rates


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--promotions", type=int, default=20)
    parser.add_argument("--naive", type=int, default=3, help="naive restarts")
    parser.add_argument("--chunks", type=int, default=4, help="app chunks of 50 requests")
    parser.add_argument("--out", type=Path, default=Path(".adaptd/bench/serving.json"))
    parser.add_argument("--workdir", type=Path, default=Path(".adaptd/bench/serving-work"))
    parser.add_argument("--base-cache", type=Path, default=Path(".adaptd/bench/base-cache"),
                        help="built base models, kept between runs")
    args = parser.parse_args(argv)
    if args.promotions < 1 or args.naive < 0 or args.chunks < 1:
        parser.error("--promotions and --chunks must be >= 1, --naive >= 0")
    from storage.crud import routing_table
    from storage.suite import load_suite
    from workers.training.base_model import ensure_base, load_base

    settings = Settings()
    venv = settings.vllm_venv if settings.vllm_venv.is_absolute() else ROOT / settings.vllm_venv
    from daemon.vllm import VLLMServer, vllm_python

    vllm_python(venv)  # a clear error before any work
    work = args.workdir.resolve()
    shutil.rmtree(work, ignore_errors=True)
    (work / "artifacts").mkdir(parents=True)
    args.base_cache.mkdir(parents=True, exist_ok=True)
    (work / "artifacts" / "_base").symlink_to(args.base_cache.resolve(), target_is_directory=True)
    suite = load_suite(SUITE)
    base = ensure_base(suite, work / "artifacts")
    engine, source = _train_one(work, suite)
    tok = load_base(suite, work / "artifacts", device="cpu").tokenizer
    tasks = sorted(suite.tasks)
    started = time.time()
    with VLLMServer(venv, base, log_path=work / "vllm.log") as server:
        ours = two_step(engine, work, source, server.url, args.promotions, tok, tasks)
        from sqlmodel import Session

        with Session(engine) as session:
            routes = routing_table(session)[1]
        rates = app_rate(suite, work / "artifacts", server.url, routes, args.chunks, 50)
    theirs = naive(venv, base, source, args.naive, work / "vllm-naive.log")
    served: dict[str, dict[str, Any]] = {
        "two_step": {"n": len(ours), "p50": percentile(ours, 50),
                     "p99": percentile(ours, 99), "values": ours},
        "restart": {"n": len(theirs), "p50": percentile(theirs, 50),
                    "p99": percentile(theirs, 99), "values": theirs}}
    result = {"bench": "serving", "machine": machine(), "started_at": started,
              "promotion_to_served_s": served, "app_requests_per_s": rates}
    rows = [[way, r["n"], r["p50"], r["p99"]] for way, r in served.items()]
    print_table("promotion to served (s)", ["way", "promotions", "p50", "p99"], rows)
    print_table("simulated app, generation step", ["generator", "requests/s"],
                [[k, v] for k, v in rates.items()])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", "utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
