"""bench/retention.py --general-share: the share reaches training, bad values are CLI errors."""

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
