"""Signals derived from measurements: task profiles, cross-task regression, co-existence.

Everything here is a pure function of its arguments.  Task names are opaque strings.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Self

__all__ = [
    "RISK_LEVELS",
    "LiveComparison",
    "PairVerdict",
    "Risk",
    "TaskProfile",
    "Verdict",
    "coexistence",
    "compatibility_matrix",
    "eval_regressions",
    "fold_affinity",
    "leak_bounds",
    "live_regression",
    "pair_affinity",
    "pair_verdict",
    "risk_gap",
    "wilson_lower",
    "wilson_upper",
]

Risk = Literal["low", "medium", "high"]
RISK_LEVELS: tuple[Risk, ...] = ("low", "medium", "high")
Verdict = Literal["compatible", "neutral", "incompatible"]


@dataclass(frozen=True)
class TaskProfile:
    """A task's static profile from the suite file."""

    risk: Risk = "medium"
    tone: str = ""

    def __post_init__(self) -> None:
        if self.risk not in RISK_LEVELS:
            raise ValueError(f"risk must be one of {RISK_LEVELS}, not {self.risk!r}")

    def to_dict(self) -> dict[str, Any]:
        return {"risk": self.risk, "tone": self.tone}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        return cls(risk=data["risk"], tone=str(data.get("tone", "")))


def risk_gap(a: Risk, b: Risk) -> int:
    """Distance between two risk levels (0..2)."""
    return abs(RISK_LEVELS.index(a) - RISK_LEVELS.index(b))


# -- cross-task regression ---------------------------------------------------------------


def eval_regressions(
    before: Mapping[str, float],
    after: Mapping[str, float],
    *,
    targeted: Collection[str] = (),
    tolerance: float | Mapping[str, float] = 0.02,
    se: Mapping[str, float | None] | None = None,
    z: float = 0.0,
) -> dict[str, float]:
    """Tasks a retrain made worse: ``{task: drop}`` for drops beyond tolerance.

    Scores are "higher is better" (acceptance, judge score).  Tasks in ``targeted`` (the ones
    the retrain was aimed at) are not reported: trading their old score for a fix is the
    point of the retrain.  A task missing from either side is skipped.  ``tolerance`` may be
    per task (e.g. tighter for high-risk tasks).  With ``se`` (per task, the standard error
    of the paired score difference; the promotion gate's test) a drop must also exceed
    ``z`` standard errors: a ~100-answer eval moves a task by a few points between two runs
    of the same adapter, and that noise alone must not count towards a fork.

    >>> eval_regressions({"a": 0.9, "b": 0.8, "c": 0.7}, {"a": 0.85, "b": 0.79, "c": 0.5},
    ...                  targeted=["c"], tolerance=0.02)
    {'a': 0.05}
    >>> eval_regressions({"a": 0.9, "b": 0.9}, {"a": 0.85, "b": 0.85}, tolerance=0.02,
    ...                  se={"a": 0.04, "b": 0.01}, z=1.64)  # a: 0.05 < 1.64 x 0.04
    {'b': 0.05}
    """
    out: dict[str, float] = {}
    for task in sorted(set(before) & set(after)):
        if task in targeted:
            continue
        tol = tolerance if isinstance(tolerance, int | float) else tolerance.get(task, 0.02)
        drop = float(before[task]) - float(after[task])
        err = (se or {}).get(task)
        if drop > tol and (err is None or drop > z * err):
            out[task] = round(drop, 12)
    return out


@dataclass(frozen=True)
class LiveComparison:
    """Live acceptance of a promoted version against the version before it."""

    before_rate: float | None
    after_rate: float | None
    drop: float
    z: float
    regressed: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "before_rate": self.before_rate,
            "after_rate": self.after_rate,
            "drop": self.drop,
            "z": self.z,
            "regressed": self.regressed,
        }


def live_regression(
    before: tuple[int, int],
    after: tuple[int, int],
    *,
    tolerance: float = 0.02,
    z_crit: float = 2.33,
    min_events: int = 100,
) -> LiveComparison:
    """Is the live acceptance after a promotion worse than before, beyond ``tolerance``?

    ``before`` / ``after`` are ``(accepted, events)``.  Regressed means: both sides have at
    least ``min_events`` events, the drop exceeds ``tolerance``, and a one-sided
    two-proportion z-test of ``drop > tolerance`` exceeds ``z_crit`` (2.33 ≈ 1% false
    positives), so a handful of unlucky events cannot trigger a rollback.

    >>> live_regression((900, 1000), (400, 500), tolerance=0.02).regressed
    True
    >>> live_regression((900, 1000), (440, 500), tolerance=0.02).regressed
    False
    """
    (a0, n0), (a1, n1) = before, after
    r0 = a0 / n0 if n0 else None
    r1 = a1 / n1 if n1 else None
    if r0 is None or r1 is None:
        return LiveComparison(r0, r1, 0.0, 0.0, False)
    drop = r0 - r1
    # Pooled variance can be 0 (all accepted on both sides): then only the drop decides.
    var = r0 * (1 - r0) / n0 + r1 * (1 - r1) / n1
    z = (drop - tolerance) / math.sqrt(var) if var > 0 else (math.inf if drop > tolerance else 0)
    z = max(min(z, 1e6), -1e6)  # keep it JSON-safe
    regressed = min(n0, n1) >= min_events and drop > tolerance and z >= z_crit
    return LiveComparison(round(r0, 12), round(r1, 12), round(drop, 12), round(z, 6), regressed)


# -- inter-task affinity and co-existence -------------------------------------------------


def pair_affinity(
    a: str, b: str, affinity: Mapping[tuple[str, str], float]
) -> tuple[float | None, float | None]:
    """``(Z[a->b], Z[b->a])`` from TAG-style lookahead measurements (``None`` if unmeasured).

    ``Z[i->j] = 1 - L_j(after a step on i) / L_j(before)``: positive when training on task
    ``i`` helps task ``j`` (Fifty et al., 2021, "Efficiently Identifying Task Groupings").
    """
    ab = affinity.get((a, b))
    ba = affinity.get((b, a))
    return (None if ab is None else float(ab), None if ba is None else float(ba))


def wilson_lower(k: int, n: int, z: float) -> float:
    """Wilson score lower bound of a rate seen ``k`` times in ``n`` (0 when ``n`` is 0).

    One flag in 20 is a 5 % rate but proves little; thirty in 600 proves it.

    >>> round(wilson_lower(1, 20, 1.64), 4), round(wilson_lower(30, 600, 1.64), 4)
    (0.0113, 0.0373)
    """
    if n <= 0:
        return 0.0
    p = k / n
    denom = 1 + z * z / n
    centre = p + z * z / (2 * n)
    spread = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, (centre - spread) / denom)


def wilson_upper(k: int, n: int, z: float) -> float:
    """Wilson score upper bound of a rate seen ``k`` times in ``n`` (1 when ``n`` is 0).

    No flag in 20 still allows an 11 % rate; none in 500 proves it below 0.6 %.

    >>> round(wilson_upper(0, 20, 1.64), 4), round(wilson_upper(0, 500, 1.64), 4)
    (0.1185, 0.0054)
    """
    if n <= 0:
        return 1.0
    return 1.0 - wilson_lower(n - k, n, z)


def leak_bounds(k: int, n: int, z: float, false_flags: float = 0.0) -> tuple[float, float]:
    """One-sided bounds (Wilson, ``z``) of the leak rate behind ``k`` crosstalk flags in
    ``n`` checked answers, when the sources of the flags also flag a share ``false_flags``
    of clean answers: a flag rate ``q`` is ``false_flags + (1 - false_flags) * leak``, so
    each bound of ``q`` maps back through that line (clipped to [0, 1]).

    >>> [round(b, 4) for b in leak_bounds(1, 40, 1.64)]  # one flag in 40: proves nothing
    [0.0056, 0.1042]
    >>> [round(b, 4) for b in leak_bounds(1, 40, 1.64, false_flags=0.005)]
    [0.0006, 0.0997]
    >>> [round(b, 4) for b in leak_bounds(20, 200, 1.64, false_flags=0.005)]
    [0.0657, 0.136]
    """
    if not 0.0 <= false_flags < 1.0:
        raise ValueError(f"false_flags must be in [0, 1), got {false_flags}")

    def leak(q: float) -> float:
        return min(1.0, max(0.0, (q - false_flags) / (1.0 - false_flags)))

    return leak(wilson_lower(k, n, z)), leak(wilson_upper(k, n, z))


def fold_affinity(
    known: Mapping[tuple[str, str], float],
    measured: Mapping[str, Mapping[str, float]],
    *,
    weight: float = 0.3,
) -> dict[tuple[str, str], float]:
    """Fold one training run's TAG measurements (``{i: {j: Z[i->j]}}``) into the running
    estimate: an exponential moving average per ordered pair, because one run's lookahead
    probes are noisy (a few hundredths either way) while the tasks' relation changes slowly.
    Pairs measured for the first time take the measurement; self-affinity is not kept.

    >>> est = fold_affinity({}, {"a": {"a": 0.1, "b": 0.02}, "b": {"a": -0.01}})
    >>> est
    {('a', 'b'): 0.02, ('b', 'a'): -0.01}
    >>> fold_affinity(est, {"a": {"b": 0.0}}, weight=0.5)
    {('a', 'b'): 0.01, ('b', 'a'): -0.01}
    """
    if not 0.0 < weight <= 1.0:
        raise ValueError("weight must be in (0, 1]")
    out = dict(known)
    for i, row in sorted(measured.items()):
        for j, z in sorted(row.items()):
            if i == j or not math.isfinite(float(z)):
                continue
            old = out.get((i, j))
            out[(i, j)] = round(float(z) if old is None else (1 - weight) * old + weight * float(z), 6)
    return dict(sorted(out.items()))


@dataclass(frozen=True)
class PairVerdict:
    """Whether two tasks may share an adapter, with the numbers behind it."""

    tasks: tuple[str, str]
    verdict: Verdict
    affinity: float | None  # the worse of the two directions
    victim: str | None  # the task harmed by negative transfer, if any
    same_tone: bool
    risk_gap: int
    reasons: tuple[str, ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        return {
            "tasks": list(self.tasks),
            "verdict": self.verdict,
            "affinity": self.affinity,
            "victim": self.victim,
            "same_tone": self.same_tone,
            "risk_gap": self.risk_gap,
            "reasons": list(self.reasons),
        }


def pair_verdict(
    a: str,
    b: str,
    profiles: Mapping[str, TaskProfile],
    affinity: Mapping[tuple[str, str], float],
    *,
    max_negative: float | Mapping[Risk, float] = -0.02,
    min_positive: float = 0.0,
    max_risk_gap: int = 1,
) -> PairVerdict:
    """Co-existence verdict for one pair.

    - ``incompatible``: measured negative transfer in either direction below
      ``max_negative`` (per risk level of the harmed task when a mapping);
    - ``compatible``: same tone, risk levels at most ``max_risk_gap`` apart and measured
      affinity at least ``min_positive`` in both measured directions;
    - ``neutral``: anything else (e.g. unmeasured affinity or different tones): tolerated in
      a shared adapter, but not enough to merge an isolated task back.

    The gap between ``max_negative`` and ``min_positive`` is the fork/merge hysteresis.
    """
    pa, pb = profiles[a], profiles[b]
    ab, ba = pair_affinity(a, b, affinity)
    same_tone = pa.tone == pb.tone
    gap = risk_gap(pa.risk, pb.risk)
    measured = [v for v in (ab, ba) if v is not None]
    worst = min(measured) if measured else None
    reasons: list[str] = []

    def limit(victim_risk: Risk) -> float:
        if isinstance(max_negative, int | float):
            return float(max_negative)
        return float(max_negative[victim_risk])

    # (direction value, harmed task): Z[a->b] harms b, Z[b->a] harms a.
    harms = [(ab, b), (ba, a)]
    hurt = [(v, t) for v, t in harms if v is not None and v < limit(profiles[t].risk)]
    if hurt:
        # The most harmed task; ties go to the higher-risk task, then the name, so the
        # verdict does not depend on argument order.
        v, victim = min(hurt, key=lambda h: (h[0], -RISK_LEVELS.index(profiles[h[1]].risk), h[1]))
        src = a if victim == b else b
        reasons.append(f"negative transfer {src}->{victim} = {v:.4g}")
        verdict: Verdict = "incompatible"
        return PairVerdict((a, b), verdict, worst, victim, same_tone, gap, tuple(reasons))
    if not same_tone:
        reasons.append(f"tones differ ({pa.tone or '-'} vs {pb.tone or '-'})")
    if gap > max_risk_gap:
        reasons.append(f"risk levels {pa.risk} and {pb.risk} too far apart")
    if worst is None:
        reasons.append("affinity not measured")
    elif worst < min_positive:
        reasons.append(f"affinity {worst:.4g} below {min_positive:.4g}")
    verdict = "neutral" if reasons else "compatible"
    if not reasons:
        reasons.append(f"same tone, similar risk, affinity {worst:.4g}")
    return PairVerdict((a, b), verdict, worst, None, same_tone, gap, tuple(reasons))


def coexistence(
    profiles: Mapping[str, TaskProfile],
    affinity: Mapping[tuple[str, str], float],
    *,
    tasks: Iterable[str] | None = None,
    max_negative: float | Mapping[Risk, float] = -0.02,
    min_positive: float = 0.0,
    max_risk_gap: int = 1,
) -> dict[tuple[str, str], PairVerdict]:
    """Verdicts for every unordered pair of ``tasks`` (default: all profiled tasks).

    >>> profiles = {"a": TaskProfile("low", "warm"), "b": TaskProfile("medium", "warm"),
    ...             "c": TaskProfile("high", "formal")}
    >>> aff = {("a", "b"): 0.03, ("b", "a"): 0.01, ("a", "c"): -0.06}
    >>> {k: v.verdict for k, v in coexistence(profiles, aff).items()}
    {('a', 'b'): 'compatible', ('a', 'c'): 'incompatible', ('b', 'c'): 'neutral'}
    """
    names = sorted(profiles if tasks is None else tasks)
    out: dict[tuple[str, str], PairVerdict] = {}
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            out[(a, b)] = pair_verdict(
                a,
                b,
                profiles,
                affinity,
                max_negative=max_negative,
                min_positive=min_positive,
                max_risk_gap=max_risk_gap,
            )
    return out


def compatibility_matrix(verdicts: Mapping[tuple[str, str], PairVerdict]) -> dict[str, dict[str, str]]:
    """Symmetric ``{task: {other: verdict}}`` view of ``coexistence`` output (for the API)."""
    out: dict[str, dict[str, str]] = {}
    for (a, b), v in sorted(verdicts.items()):
        out.setdefault(a, {})[b] = v.verdict
        out.setdefault(b, {})[a] = v.verdict
    return {t: dict(sorted(row.items())) for t, row in sorted(out.items())}
