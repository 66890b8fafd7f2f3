"""``python -m bench.mixture``: four versions per seed trained at the scenario's phase mixes and
judged on the very same requests, and clear CLI errors for a bad phase or override."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.support.processes import ROOT

SUITE_PATH = Path(__file__).parent / "suite.yaml"
# The bench in a subprocess that loads torch and the tiny base and trains eight small versions.
pytestmark = pytest.mark.slow

FAST = ["steps=3", "affinity_measurements=0", 'audit={"rounds": 1, "samples": 4, "steps": 2}']


def _scenario(tmp_path: Path) -> Path:
    path = tmp_path / "scenario.yaml"
    path.write_text(
        f"seed: 5\nsuite: {SUITE_PATH}\nphases:\n"
        "  - {name: calm, events: 10, traffic: {greeting: 1, thanks: 1, apology: 2}}\n"
        "  - {name: rush, events: 10, traffic: {greeting: 8, thanks: 1, apology: 1}}\n")
    return path


def _cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bench.mixture", *args],
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def test_each_arm_is_judged_on_the_same_requests_at_its_phase_mix(
        tmp_path: Path, base_root: Path) -> None:
    artifacts = tmp_path / "artifacts"
    artifacts.mkdir()
    os.symlink(base_root / "_base", artifacts / "_base")
    out = tmp_path / "mixture.json"
    proc = _cli("--scenario", str(_scenario(tmp_path)), "--seeds", "3", "--requests", "6",
                "--artifacts", str(artifacts), "--out", str(out), "--warmup-runs", "1",
                "--train", *FAST, timeout=900)
    assert proc.returncode == 0, proc.stderr
    assert "skewed − control" in proc.stdout and "rebalanced − skewed" in proc.stdout
    result: dict[str, Any] = json.loads(out.read_text())
    # The phases' traffic over the shared adapter's tasks, as ratios.
    assert result["mixes"]["base"] == {"apology": 0.5, "greeting": 0.25, "thanks": 0.25}
    assert result["mixes"]["surge"] == {"apology": 0.1, "greeting": 0.8, "thanks": 0.1}
    run = result["runs"]["3"]
    assert list(run) == ["balanced", "control", "skewed", "rebalanced"]
    # The warm-up run matures `balanced` only; every other arm is one run from its parent.
    assert [arm["runs"] for arm in run.values()] == [2, 1, 1, 1]
    assert result["warmup_runs"] == 1 and "balanced after 2 runs" in " ".join(proc.stdout.split())
    for arm in run.values():
        assert {t: r["n"] for t, r in arm["tasks"].items()} == {
            "apology": 6, "greeting": 6, "thanks": 6}
        assert all(0 <= r["crosstalk"] <= r["n"] - r["accepted"] for r in arm["tasks"].values())
    # Pooled over the high-risk task only, from the per-seed counts.
    pooled = result["pooled"]
    assert pooled["tasks"] == ["apology"]
    for name, arm in pooled["arms"].items():
        assert (arm["crosstalk"], arm["n"]) == (run[name]["tasks"]["apology"]["crosstalk"], 6)
        assert arm["interval"][0] <= arm["rate"] <= arm["interval"][1]
    d = pooled["skew_effect"]
    assert d["difference"] == round((pooled["arms"]["skewed"]["crosstalk"]
                                     - pooled["arms"]["control"]["crosstalk"]) / 6, 4)
    assert result["train_overrides"]["steps"] == 3


def test_a_bad_phase_or_override_is_a_clear_error(tmp_path: Path) -> None:
    scenario = str(_scenario(tmp_path))
    phase = _cli("--scenario", scenario, "--surge-phase", "holiday")
    assert phase.returncode != 0 and "Traceback" not in phase.stderr
    assert "no phase 'holiday'; the scenario has calm, rush" in phase.stderr
    override = _cli("--scenario", scenario, "--train", "stepz=3")
    assert override.returncode == 2 and "--train: stepz: Extra inputs" in override.stderr
    requests = _cli("--scenario", scenario, "--requests", "0")
    assert requests.returncode == 2 and "--requests must be at least 1" in requests.stderr
    warmup = _cli("--scenario", scenario, "--warmup-runs", "-1")
    assert warmup.returncode == 2 and "--warmup-runs must be 0 or more" in warmup.stderr
