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
