"""A job's general share and task ratios reach training: ``TrainConfig.general_share`` overrides
the suite's, and the shared adapter draws its tasks on the ratios it is given. The retention
bench (``python -m bench.retention --general-share``) rests on the first; a bad share is a CLI
error there."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from storage.suite import Suite
from tests.support.processes import ROOT
from workers.training.base_model import load_base
from workers.training.config import TrainConfig
from workers.training.data import assemble
from workers.training.sampler import default_ratios
from workers.training.trainer import TrainResult, train_adapter


def _train(suite: Suite, base_root: Path, tasks: list[str], train: dict[str, Any],
           ratios: Mapping[str, float] | None = None) -> TrainResult:
    """An adapter over ``tasks`` from fresh LoRA weights, 20 steps on seed data, as a job
    trains one (the general share resolved against the suite's)."""
    bundle = load_base(suite, base_root, device="cpu")
    data = assemble(suite, tasks)
    cfg = TrainConfig.model_validate({"seed": 0, "checkpoint_every": 10**6, **train,
                                      "steps": 20, "task_scaling": 0.0})
    return train_adapter(bundle, data, config=cfg,
                         ratios=dict(ratios) if ratios else default_ratios(data.sizes()),
                         general_share=cfg.general_share_or(suite.general_share))


@pytest.mark.parametrize("share", [0.0, 0.5])
def test_configured_general_share_overrides_the_suites(suite: Suite, base_root: Path,
                                                       share: float) -> None:
    assert suite.general_share != share  # the suite's own value would pass unnoticed
    result = _train(suite, base_root, sorted(suite.tasks),
                    {"general_share": share, "batch_examples": 8})
    total = sum(result.drawn.values())
    assert abs(result.drawn.get("_general", 0) - share * total) <= 0.05 * total


def test_given_ratios_reach_training(suite: Suite, base_root: Path) -> None:
    # One mixed stage: the other stages follow losses and blocks, not the given ratios.
    tasks = sorted(suite.tasks)[:2]
    mix = {tasks[0]: 0.8, tasks[1]: 0.2}
    result = _train(suite, base_root, tasks,
                    {"general_share": 0.0, "negative_share": 0.0, "batch_examples": 10,
                     "stages": [{"kind": "mixed", "fraction": 1.0}]}, ratios=mix)
    drawn = {t: result.drawn.get(t, 0) for t in tasks}
    assert drawn[tasks[0]] == 4 * drawn[tasks[1]] > 0


@pytest.mark.parametrize("bad", ["1.5", "-0.1"])
def test_bad_general_share_is_a_clear_error(tmp_path: Path, bad: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "bench.retention", "--general-share", bad,
         "--out", str(tmp_path / "out.json")],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )
    assert proc.returncode == 2
    assert f"--general-share {float(bad)}: want a share in [0, 1)" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "out.json").exists()
