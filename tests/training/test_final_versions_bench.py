"""``python -m bench.final_versions``: a loop run's final routed versions are judged on the same
fresh requests for every policy, a task without a route answers with the base, and a missing run
or task is a clear CLI error."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from storage.artifacts import write_version
from storage.suite import Suite
from tests.support.processes import ROOT
from workers.training.audit import audit_requests
from workers.training.data import assemble
from workers.training.sampler import default_ratios
from workers.training.trainer import train_adapter

SUITE_PATH = Path(__file__).parent / "suite.yaml"
# The bench in subprocesses that load torch and the tiny base: tens of seconds each.
pytestmark = pytest.mark.slow


def _run_dir(tmp_path: Path, base_root: Path, routing: dict[str, Any]) -> Path:
    """A directory laid out as ``bench/loop.py`` leaves a run: report.json and state/artifacts."""
    run = tmp_path / "adaptive-5"
    (run / "state" / "artifacts").mkdir(parents=True)
    os.symlink(base_root / "_base", run / "state" / "artifacts" / "_base")
    (run / "report.json").write_text(json.dumps({"routing": routing}))
    return run


def test_judges_each_tasks_served_version_on_the_same_requests(
        tmp_path: Path, bundle: Any, suite: Suite, base_root: Path, train_cfg: Any) -> None:
    data = assemble(suite, ["greeting"])
    result = train_adapter(bundle, data, ratios=default_ratios(data.sizes()),
                           config=train_cfg(steps=8, affinity_measurements=0), general_share=0.3)
    run = _run_dir(tmp_path, base_root, {})
    info = write_version(run / "state" / "artifacts", "greeting", 2,
                         write_files=lambda tmp: result.model.save_pretrained(str(tmp)),
                         meta={"tasks": ["greeting"], "base_model": suite.base_model})
    routing = {"greeting": {"adapter": "greeting", "version": 2, "path": str(info.path)}}
    (run / "report.json").write_text(json.dumps({"routing": routing}))

    scenario = tmp_path / "scenario.yaml"
    scenario.write_text(f"seed: 5\nsuite: {SUITE_PATH}\n"
                        "phases:\n  - {name: only, events: 10, traffic: {greeting: 1.0}}\n")

    def judged(out: Path) -> dict[str, Any]:
        proc = _cli("--workdir", str(tmp_path), "--seeds", "5", "--policies", "adaptive",
                    "--scenario", str(scenario), "--tasks", "greeting", "thanks",
                    "--requests", "12", "--out", str(out), timeout=600)
        assert proc.returncode == 0, proc.stderr
        assert "greeting" in proc.stdout  # the table
        runs: dict[str, Any] = json.loads(out.read_text())["runs"]["adaptive"]["5"]
        return runs

    first, again = judged(tmp_path / "a.json"), judged(tmp_path / "b.json")
    assert first["greeting"]["version"] == "greeting@2" and first["thanks"]["version"] == "base"
    assert {r["n"] for r in first.values()} == {12}
    assert all(0 <= r["accepted"] <= 12 for r in first.values())
    assert first == again  # same requests, same sampling seed: the same verdicts


def test_its_requests_repeat_per_seed_and_are_not_the_audits() -> None:
    from storage.suite import load_suite

    festive = load_suite("builtin:festive-zh")
    ours = audit_requests(festive, "apology", samples=3, seed=7, stream="final-versions")
    assert ours == audit_requests(festive, "apology", samples=3, seed=7, stream="final-versions")
    assert ours != audit_requests(festive, "apology", samples=3, seed=8, stream="final-versions")
    assert ours != audit_requests(festive, "apology", samples=3, seed=7)  # the audit's stream


def _cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bench.final_versions", *args],
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def test_a_missing_run_or_task_is_a_clear_error(tmp_path: Path) -> None:
    missing = _cli("--workdir", str(tmp_path), "--seeds", "5")
    assert missing.returncode != 0 and "Traceback" not in missing.stderr
    assert "adaptive-5/report.json not found" in missing.stderr
    bad_task = _cli("--workdir", str(tmp_path), "--seeds", "5", "--tasks", "nope")
    assert bad_task.returncode == 2 and "unknown task(s) nope" in bad_task.stderr


def test_a_bad_scenario_is_a_clear_error(tmp_path: Path) -> None:
    """A scenario whose suite does not load (here a task's data file has no examples) is a CLI
    error, not a traceback."""
    (tmp_path / "empty.jsonl").write_text("")
    (tmp_path / "suite.yaml").write_text(
        "name: one\nbase_model: builtin:tiny\ntasks:\n  quiet: {risk: low, data: empty.jsonl}\n")
    (tmp_path / "scenario.yaml").write_text(
        f"seed: 5\nsuite: {tmp_path / 'suite.yaml'}\n"
        "phases:\n  - {name: only, events: 10, traffic: {quiet: 1.0}}\n")
    for scenario in (tmp_path / "scenario.yaml", tmp_path / "nope.yaml"):
        bad = _cli("--workdir", str(tmp_path), "--seeds", "5", "--scenario", str(scenario))
        assert bad.returncode == 2 and "Traceback" not in bad.stderr, bad.stderr
    assert "empty.jsonl: no examples" in _cli(
        "--workdir", str(tmp_path), "--seeds", "5", "--scenario",
        str(tmp_path / "scenario.yaml")).stderr
