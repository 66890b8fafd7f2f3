"""The promotion gate: per-risk tolerances, targeted tasks, general retention."""

from __future__ import annotations

from typing import Any

from workers.training.config import GateConfig
from workers.training.gate import GENERAL_KEY, gate

RISKS = {"greeting": "low", "thanks": "medium", "apology": "high"}


def ev(quality: dict[str, float], crosstalk: dict[str, float] | None = None,
       general: float | None = 1.0) -> dict[str, Any]:
    crosstalk = crosstalk or {}
    return {"tasks": {t: {"quality": q, "crosstalk_rate": crosstalk.get(t, 0.0)}
                      for t, q in quality.items()},
            "general_loss": general}


PROD = ev({"greeting": 0.60, "thanks": 0.60, "apology": 0.60})


def test_planted_regression_of_one_task_is_rejected_while_others_improve() -> None:
    cand = ev({"greeting": 0.75, "thanks": 0.72, "apology": 0.57})  # apology -0.03 > 0.02
    result = gate(cand, PROD, risks=RISKS)
    assert not result.promote
    assert result.reasons["apology"].startswith("regressed: quality dropped by 0.030")
    assert result.reasons["greeting"].startswith("ok")
    assert result.reasons["thanks"].startswith("ok")
    assert "apology" in result.summary()


def test_same_drop_is_tolerated_for_a_low_risk_task() -> None:
    cand = ev({"greeting": 0.55, "thanks": 0.62, "apology": 0.61})  # low risk: 0.05 < 0.08
    assert gate(cand, PROD, risks=RISKS).promote


def test_crosstalk_rise_is_a_regression() -> None:
    cand = ev({"greeting": 0.7, "thanks": 0.7, "apology": 0.7}, crosstalk={"apology": 0.25})
    result = gate(cand, PROD, risks=RISKS)
    assert not result.promote
    assert "crosstalk rose by 0.250" in result.reasons["apology"]


def test_targeted_task_must_not_get_worse() -> None:
    cand = ev({"greeting": 0.57, "thanks": 0.7, "apology": 0.7})  # greeting -0.03
    assert gate(cand, PROD, risks=RISKS).promote  # within the low-risk tolerance
    result = gate(cand, PROD, risks=RISKS, targeted=["greeting"])
    assert not result.promote and "targeted" in result.reasons["greeting"]
    noise = ev({"greeting": 0.59, "thanks": 0.7, "apology": 0.7})  # -0.01: below the noise floor
    assert gate(noise, PROD, risks=RISKS, targeted=["greeting"]).promote
    strict = GateConfig(targeted_tolerance=0.0)
    assert not gate(noise, PROD, risks=RISKS, targeted=["greeting"], config=strict).promote


def test_general_retention() -> None:
    cand = ev({"greeting": 0.7, "thanks": 0.7, "apology": 0.7}, general=1.2)
    result = gate(cand, PROD, risks=RISKS, config=GateConfig(general_loss_tolerance=0.1))
    assert not result.promote and result.reasons[GENERAL_KEY].startswith("regressed")


def test_unevaluated_tasks_and_first_version() -> None:
    cand = ev({"greeting": 0.7, "thanks": 0.7, "apology": 0.7})
    cand["tasks"]["thanks"]["quality"] = None
    result = gate(cand, {"tasks": {}}, risks=RISKS)
    assert result.promote and "not evaluated" in result.reasons["thanks"]


def test_first_version_is_compared_with_the_base_model_loosely() -> None:
    base = ev({"greeting": 1.0, "thanks": 1.0, "apology": 1.0})
    for stats in base["tasks"].values():
        stats["baseline"] = "base"
    cand = ev({"greeting": 0.95, "thanks": 0.97, "apology": 0.93})
    result = gate(cand, base, risks=RISKS)
    assert result.promote and "first version" in result.reasons["apology"]
    worse = ev({"greeting": 0.95, "thanks": 0.97, "apology": 0.5})
    assert not gate(worse, base, risks=RISKS).promote


def test_mean_gate_lets_one_task_degrade_when_others_improve() -> None:
    """The baselines' gate: the average hides the regression the per-task gate catches."""
    prod = ev({"greeting": 0.80, "thanks": 0.80, "apology": 1.00})
    cand = ev({"greeting": 0.95, "thanks": 0.95, "apology": 0.85})
    risks = {"greeting": "low", "thanks": "medium", "apology": "high"}
    assert not gate(cand, prod, risks=risks).promote
    naive = gate(cand, prod, risks=risks, config=GateConfig(mode="mean"))
    assert naive.promote
    assert naive.reasons["apology"].startswith("ok (mean gate; would regress per task)")
    worse = ev({"greeting": 0.80, "thanks": 0.80, "apology": 0.85})
    assert not gate(worse, prod, risks=risks, config=GateConfig(mode="mean")).promote


def per_output(quality: dict[str, list[float]], leaks: dict[str, list[int]] | None = None
               ) -> dict[str, Any]:
    """An eval with per-output values, as the sampled evaluation writes it."""
    leaks = leaks or {}
    tasks = {}
    for t, scores in quality.items():
        lk = leaks.get(t, [0] * len(scores))
        tasks[t] = {"quality": sum(scores) / len(scores), "scores": scores,
                    "crosstalk_rate": sum(lk) / len(lk), "leaks": lk}
    return {"tasks": tasks, "general_loss": 1.0}


def test_a_drop_within_sampling_noise_does_not_reject() -> None:
    # 64 outputs; the candidate loses 4 and gains 1: a 0.047 drop for a high-risk task
    # (tolerance 0.02), but the paired standard error is 0.035 and 1.64 x 0.035 > 0.047:
    # not significant.
    prod = [1.0] * 60 + [0.0] * 4
    cand = [1.0] * 56 + [0.0] * 4 + [0.0] * 3 + [1.0]
    result = gate(per_output({"apology": cand}), per_output({"apology": prod}), risks=RISKS)
    assert result.promote, result.reasons
    assert "within noise" in result.reasons["apology"]
    # The same means without per-output values: the tolerance alone decides.
    plain = gate(ev({"apology": sum(cand) / 64}), ev({"apology": sum(prod) / 64}), risks=RISKS)
    assert not plain.promote


def test_a_significant_leak_rejects_even_with_noise_accounting() -> None:
    # The candidate leaks on 10 of 64 outputs that production answered cleanly.
    prod_leaks = [0] * 64
    cand_leaks = [1] * 10 + [0] * 54
    result = gate(per_output({"apology": [1.0] * 64}, {"apology": cand_leaks}),
                  per_output({"apology": [1.0] * 64}, {"apology": prod_leaks}), risks=RISKS)
    assert not result.promote
    assert result.reasons["apology"].startswith("regressed: crosstalk rose by 0.156 (se ")


def test_z_zero_turns_the_noise_accounting_off() -> None:
    prod = [1.0] * 60 + [0.0] * 4
    cand = [1.0] * 56 + [0.0] * 8
    result = gate(per_output({"apology": cand}), per_output({"apology": prod}), risks=RISKS,
                  config=GateConfig(z=0.0))
    assert not result.promote
