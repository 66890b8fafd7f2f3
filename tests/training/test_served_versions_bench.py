"""``bench/served_versions.py``: the versions that answered a run's final-phase requests (by
the feedback events in its database) are judged on fresh requests and weighted by the
requests each served; a missing run is a clear CLI error."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from sqlmodel import Session

from bench.served_versions import judge_served, served_counts
from storage.artifacts import write_version
from storage.db import make_engine, migrate
from storage.models import FeedbackEvent
from storage.suite import Suite
from tests.training.fast import fast_eval_config
from workers.training.data import assemble
from workers.training.sampler import default_ratios
from workers.training.trainer import train_adapter

REPO = Path(__file__).parent.parent.parent

# (request number, task, adapter version that answered it); the final phase starts at 4.
EVENTS = [(0, "greeting", None), (1, "greeting", "greeting@1"), (2, "thanks", None),
          (3, "greeting", "greeting@1"), (4, "greeting", "greeting@1"), (5, "greeting", "greeting@2"),
          (6, "greeting", "greeting@2"), (7, "greeting", "greeting@2"), (8, "thanks", None)]


def _run_dir(tmp_path: Path, base_root: Path) -> Path:
    """A directory laid out as ``bench/loop.py`` leaves a run: report.json, the run's SQLite
    database with its feedback events, and state/artifacts."""
    run = tmp_path / "adaptive-5"
    (run / "state" / "artifacts").mkdir(parents=True)
    os.symlink(base_root / "_base", run / "state" / "artifacts" / "_base")
    (run / "report.json").write_text(json.dumps(
        {"phases": [{"name": "steady", "events": 4}, {"name": "after", "events": 5}]}))
    url = f"sqlite:///{run / 'state' / 'adaptd.db'}"
    migrate(url)
    with Session(make_engine(url)) as session:
        for n, task, adapter in EVENTS:
            session.add(FeedbackEvent(id=f"sim_5_{n}", task=task, adapter=adapter, prompt="p",
                                      output="o", verdict="accept", occurred_at=0.0))
        session.commit()
    return run


def test_counts_only_the_final_phase_and_weights_by_requests_served(
        tmp_path: Path, bundle: Any, suite: Suite, base_root: Path, train_cfg: Any) -> None:
    run = _run_dir(tmp_path, base_root)
    assert served_counts(run, 4) == {"greeting": {"greeting@1": 1, "greeting@2": 3},
                                     "thanks": {"base": 1}}
    from workers.training.base_model import load_base

    data = assemble(suite, ["greeting"])
    fresh = load_base(suite, base_root, device="cpu")  # training wraps a base in place
    for version, steps, base in ((1, 2, bundle), (2, 8, fresh)):
        result = train_adapter(base, data, ratios=default_ratios(data.sizes()),
                               config=train_cfg(steps=steps, affinity_measurements=0),
                               general_share=0.3)
        write_version(run / "state" / "artifacts", "greeting", version,
                      write_files=lambda tmp, m=result.model: m.save_pretrained(str(tmp)),
                      meta={"tasks": ["greeting"], "base_model": suite.base_model})

    ecfg = fast_eval_config()
    first = judge_served(suite, run, ["greeting", "thanks"], requests=12, seed=3, ecfg=ecfg)
    again = judge_served(suite, run, ["greeting", "thanks"], requests=12, seed=3, ecfg=ecfg)
    assert first == again  # same requests, same sampling seeds: the same verdicts
    versions = first["greeting"]["versions"]
    assert {v: d["served"] for v, d in versions.items()} == {"greeting@1": 1, "greeting@2": 3}
    assert all(d["n"] == 12 for d in versions.values())
    rate = {v: d["accepted"] / 12 for v, d in versions.items()}
    assert abs(first["greeting"]["expected"] - (rate["greeting@1"] + 3 * rate["greeting@2"]) / 4) < 1e-4
    assert list(first["thanks"]["versions"]) == ["base"]  # no route: the base answered


def test_a_missing_run_is_a_clear_error(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, str(REPO / "bench" / "served_versions.py"),
                          "--workdir", str(tmp_path), "--seeds", "5"],
                         capture_output=True, text=True, timeout=120, cwd=REPO)
    assert out.returncode != 0 and "Traceback" not in out.stderr
    assert "adaptive-5/report.json not found" in out.stderr
