"""Small training, eval and gate configs shared by the fixtures and ``job_runner.py``."""

from __future__ import annotations

from typing import Any

from workers.training.config import EvalConfig, GateConfig, TrainConfig

# Every tolerance wide open: the job-runner tests are about claiming, writing, promoting and
# publishing, not the gate's verdict (sampled evals differ across machines with the CPU's
# float order).
LENIENT_GATE = GateConfig(tolerance={"high": 1.0, "medium": 1.0, "low": 1.0},
                          targeted_tolerance=1.0, bootstrap_tolerance=1.0,
                          general_loss_tolerance=100.0)


def fast_train_config(**overrides: Any) -> TrainConfig:
    base: dict[str, Any] = {"steps": 24, "batch_examples": 8, "checkpoint_every": 4,
                            "affinity_measurements": 1, "log_every": 4, "warmup_steps": 2,
                            # One small self-audit round: the path runs, at a test's cost.
                            "audit": {"rounds": 1, "samples": 16, "steps": 4}}
    return TrainConfig(**{**base, **overrides})


def fast_eval_config() -> EvalConfig:
    return EvalConfig(prompts_per_task=6, samples_per_prompt=2, max_new_tokens=32,
                      general_examples=8)
