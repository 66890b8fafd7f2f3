"""A short scenario end to end through a real vLLM: the simulated app asks /v1/routing, sends
the routed served name and prompt contract to vLLM's completions API and judges that answer,
while the stack's serving worker keeps the replica loaded."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from rich.console import Console

from daemon.settings import Settings
from daemon.sim.run import run_simulation
from daemon.vllm import VLLMServer
from storage.suite import BUILTIN_DIR
from tests.serving.support import listed

TASKS = {"greeting", "festival_wish", "thanks", "praise", "apology", "complaint_reply"}


@pytest.mark.timeout(900)
def test_a_short_scenario_runs_through_vllm(make_settings: Any, tmp_path: Path,
                                            vllm: VLLMServer, base_root: Path) -> None:
    scenario = {"seed": 5, "suite": str(BUILTIN_DIR / "festive-zh.yaml"), "phases": [
        {"name": "only", "events": 60, "traffic": {t: 1.0 for t in sorted(TASKS)}}]}
    path = tmp_path / "scenario.yaml"
    path.write_text(yaml.safe_dump(scenario), "utf-8")
    settings: Settings = make_settings()
    report = run_simulation(
        settings, str(path), policy="adaptive", report_path=tmp_path / "report.json",
        workdir=tmp_path / "state", console=Console(quiet=True),
        base_cache=(base_root / "_base").resolve(),
        train_overrides={"steps": 8, "affinity_measurements": 0, "audit": {"rounds": 0}},
        serving="vllm", serving_url=vllm.url)
    assert report["serving"] == "vllm"
    (phase,) = report["phases"]
    assert sum(r["events"] for r in phase["tasks"].values()) == 60
    assert set(report["routing"]) == TASKS
    names = {r["served_as"] for r in report["routing"].values()}
    assert names and names <= listed(vllm.url)  # what the app was told to send is loaded
    for route in report["routing"].values():
        assert route["prompt"]["prefix"].startswith("<task:") and route["prompt"]["suffix"]
    # Every answer came back from vLLM and was judged (a 4xx would have stopped the run).
    on_disk = json.loads((tmp_path / "report.json").read_text("utf-8"))
    assert on_disk["serving"] == "vllm"
    log = (tmp_path / "state" / "logs" / "worker.log").read_text("utf-8", errors="replace")
    assert "adaptd.serving.sync" in log
