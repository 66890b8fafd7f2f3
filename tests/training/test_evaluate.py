"""The per-task evaluation: sampled like production, repeatable, paired across models."""

from __future__ import annotations

from typing import Any

from storage.suite import Suite
from workers.training.config import EvalConfig
from workers.training.data import assemble
from workers.training.evaluate import evaluate_model
from workers.training.style import build_detector


def _eval(bundle: Any, suite: Suite, cfg: EvalConfig) -> dict[str, Any]:
    data = assemble(suite, sorted(suite.tasks))
    return evaluate_model(bundle.model, bundle.tokenizer, data, suite, tasks=sorted(suite.tasks),
                          detector=build_detector(suite), cfg=cfg, with_general=False)


def test_sampled_eval_is_repeatable_and_answers_each_prompt_k_times(bundle: Any,
                                                                    suite: Suite) -> None:
    cfg = EvalConfig(prompts_per_task=4, samples_per_prompt=3, max_new_tokens=16)
    first, again = _eval(bundle, suite, cfg), _eval(bundle, suite, cfg)
    for task, r in first["tasks"].items():
        if r["quality"] is None:
            continue
        assert r["n"] == len(r["scores"]) == len(r["leaks"]) == 12
        assert r["scores"] == again["tasks"][task]["scores"]  # same seed, same draws
        assert r["crosstalk_rate"] == round(sum(r["leaks"]) / 12, 5)
    # Another seed draws other outputs somewhere (sampling really happens).
    other = _eval(bundle, suite, cfg.model_copy(update={"seed": 1}))
    assert any(other["tasks"][t]["scores"] != r["scores"]
               for t, r in first["tasks"].items() if r["quality"] is not None)


def test_greedy_eval_answers_each_prompt_once(bundle: Any, suite: Suite) -> None:
    cfg = EvalConfig(prompts_per_task=4, samples_per_prompt=3, max_new_tokens=16, sampling=False)
    result = _eval(bundle, suite, cfg)
    assert all(r["n"] == 4 for r in result["tasks"].values() if r["quality"] is not None)
