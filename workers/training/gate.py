"""The promotion gate: a pure function over two eval dicts (see ``evaluate.py``).

Promote only if no task regresses beyond its risk level's tolerance (quality drop or
crosstalk rise), the targeted tasks do not get worse at all (``targeted_tolerance``, default
0), and general-data loss does not rise by more than ``general_loss_tolerance`` (relative).
A task that has no production version yet (its baseline is the bare base model, marked
``"baseline": "base"`` by the evaluation) uses the looser ``bootstrap_tolerance``.
When both evals carry per-output values (``scores``, ``leaks``: same prompts, same random
draws), a drop beyond the tolerance must also be significant, ``z`` standard errors of the
paired differences, so sampling noise alone does not reject a version.
Every task gets a reason, starting with ``ok`` or ``regressed``; general retention is
reported under the key ``_general`` (not a valid task name, so it cannot collide).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from workers.training.config import GateConfig
from workers.training.sampler import GENERAL

GENERAL_KEY = GENERAL  # the general-data row of a gate report


@dataclass(frozen=True)
class GateResult:
    promote: bool
    reasons: dict[str, str] = field(default_factory=dict)

    def summary(self) -> str:
        bad = {k: v for k, v in self.reasons.items() if not v.startswith("ok")}
        if self.promote:
            return "promoted: no task regressed"
        return "rejected: " + "; ".join(f"{k}: {v}" for k, v in sorted(bad.items()))


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def gate(
    candidate: Mapping[str, Any], production: Mapping[str, Any], *, risks: Mapping[str, str],
    targeted: Iterable[str] = (), config: GateConfig | None = None,
) -> GateResult:
    cfg = config or GateConfig()
    targeted = set(targeted)
    reasons: dict[str, str] = {}
    promote = True
    cand_tasks = candidate.get("tasks", {})
    prod_tasks = production.get("tasks", {})
    for task in sorted(cand_tasks):
        c, p = cand_tasks[task], prod_tasks.get(task, {})
        cq, pq = c.get("quality"), p.get("quality")
        cx, px = c.get("crosstalk_rate"), p.get("crosstalk_rate")
        risk = risks.get(task, "high")  # unknown risk: be strict
        tol = cfg.targeted_tolerance if task in targeted else cfg.tolerance.get(risk, 0.0)
        kind = "targeted" if task in targeted else f"{risk} risk"
        if p.get("baseline") == "base":
            tol, kind = cfg.bootstrap_tolerance, f"{kind}, first version vs base model"
        what = (f"quality {_fmt(pq)} -> {_fmt(cq)}, crosstalk {_fmt(px)} -> {_fmt(cx)} "
                f"({kind}, tolerance {tol:.2f})")
        if cq is None:
            reasons[task] = f"ok: not evaluated (no held-out data); {what}"
            continue
        problems = []
        if pq is not None and cq < pq - tol - 1e-9:
            se = paired_se(c.get("scores"), p.get("scores"))
            if se is None or pq - cq > cfg.z * se:
                problems.append(f"quality dropped by {pq - cq:.3f}{_se(se)}")
            else:
                what += f"; quality drop {pq - cq:.3f} within noise ({cfg.z:g} x se {se:.3f})"
        if cx is not None and px is not None and cx > px + tol + 1e-9:
            se = paired_se(c.get("leaks"), p.get("leaks"))
            if se is None or cx - px > cfg.z * se:
                problems.append(f"crosstalk rose by {cx - px:.3f}{_se(se)}")
            else:
                what += f"; crosstalk rise {cx - px:.3f} within noise ({cfg.z:g} x se {se:.3f})"
        if problems:
            promote = False
            reasons[task] = f"regressed: {', '.join(problems)}; {what}"
        else:
            reasons[task] = f"ok: {what}"
    if cfg.mode == "mean":
        promote = _mean_gate(cand_tasks, prod_tasks, cfg, reasons)
    cg, pg = candidate.get("general_loss"), production.get("general_loss")
    if cg is not None and pg is not None:
        limit = pg * (1 + cfg.general_loss_tolerance)
        what = f"general loss {pg:.3f} -> {cg:.3f} (limit {limit:.3f})"
        if cg > limit:
            promote = False
            reasons[GENERAL_KEY] = f"regressed: {what}"
        else:
            reasons[GENERAL_KEY] = f"ok: {what}"
    return GateResult(promote=promote, reasons=reasons)


def paired_se(cand: Sequence[float] | None, prod: Sequence[float] | None) -> float | None:
    """Standard error of the mean paired difference, or None if the values do not pair.

    >>> round(paired_se([1, 1, 0, 1], [1, 0, 0, 0]), 3)
    0.289
    >>> paired_se([1, 0], [1, 0, 1]) is None
    True
    """
    if not cand or not prod or len(cand) != len(prod) or len(cand) < 2:
        return None
    diffs = [c - p for c, p in zip(cand, prod, strict=True)]
    mean = sum(diffs) / len(diffs)
    var = sum((d - mean) ** 2 for d in diffs) / (len(diffs) - 1)
    return math.sqrt(var / len(diffs))


def _se(se: float | None) -> str:
    return "" if se is None else f" (se {se:.3f})"


MEAN_KEY = "_mean"


def _mean_gate(cand: Mapping[str, Any], prod: Mapping[str, Any], cfg: GateConfig,
               reasons: dict[str, str]) -> bool:
    """The naive gate: only the average quality over tasks counts (per-task reasons stay
    in the record, prefixed ``ok`` since they do not decide)."""
    pairs = [(c.get("quality"), prod.get(t, {}).get("quality")) for t, c in cand.items()]
    pairs = [(c, p) for c, p in pairs if c is not None and p is not None]
    for task, why in list(reasons.items()):
        if why.startswith("regressed"):
            reasons[task] = "ok (mean gate; would regress per task): " + why.removeprefix("regressed: ")
    if not pairs:
        reasons[MEAN_KEY] = "ok: nothing to compare"
        return True
    c_mean = sum(c for c, _ in pairs) / len(pairs)
    p_mean = sum(p for _, p in pairs) / len(pairs)
    what = f"mean quality {p_mean:.3f} -> {c_mean:.3f} (tolerance {cfg.mean_tolerance:.2f})"
    if c_mean < p_mean - cfg.mean_tolerance - 1e-9:
        reasons[MEAN_KEY] = f"regressed: {what}"
        return False
    reasons[MEAN_KEY] = f"ok: {what}"
    return True
