"""bench/retention.py --general-share and task_steps --mix: the share and the ratios reach
training; bad values are CLI errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bench.task_steps import train_fresh
from storage.suite import Suite

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("share", [0.0, 0.5])
def test_configured_general_share_overrides_the_suites(suite: Suite, base_root: Path,
                                                       share: float) -> None:
    assert suite.general_share != share  # the suite's own value would pass unnoticed
    _, result, _, _ = train_fresh(suite, base_root, sorted(suite.tasks), 20, seed=0,
                                  train={"general_share": share, "batch_examples": 8})
    total = sum(result.drawn.values())
    assert abs(result.drawn.get("_general", 0) - share * total) <= 0.05 * total


def test_given_ratios_reach_training(suite: Suite, base_root: Path) -> None:
    # bench/task_steps.py --mix: the shared adapter draws its tasks on the given ratios, not
    # on the prior over data sizes (one mixed stage: the others follow losses and blocks).
    tasks = sorted(suite.tasks)[:2]
    mix = {tasks[0]: 0.8, tasks[1]: 0.2}
    _, result, _, _ = train_fresh(suite, base_root, tasks, 20, seed=0, ratios=mix,
                                  train={"general_share": 0.0, "negative_share": 0.0,
                                         "batch_examples": 10,
                                         "stages": [{"kind": "mixed", "fraction": 1.0}]})
    drawn = {t: result.drawn.get(t, 0) for t in tasks}
    assert drawn[tasks[0]] == 4 * drawn[tasks[1]] > 0


@pytest.mark.parametrize("bad", ["1.5", "-0.1"])
def test_bad_general_share_is_a_clear_error(tmp_path: Path, bad: str) -> None:
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench/retention.py"), "--general-share", bad,
         "--out", str(tmp_path / "out.json")],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    assert f"--general-share {float(bad)}: want a share in [0, 1)" in proc.stderr
    assert "Traceback" not in proc.stderr
