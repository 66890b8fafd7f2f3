"""Task mixture ratios of a shared adapter: a temperature prior, then small bounded updates.

The prior is temperature sampling over data sizes, ``p_i ∝ n_i ** (1/T)`` (T=1: proportional,
T→∞: uniform), which keeps a big task from drowning small ones without over-sampling a tiny
task's few examples.  Signals then nudge the ratios multiplicatively (raise a degrading task,
lower the source of its crosstalk).  Every result is projected back onto the feasible set:
sum 1, each ratio in ``[floor, cap]`` and, for updates, within a factor ``1 + max_step`` of
its previous value, so one noisy signal can never swing the mix.  The projection scales the
unclamped ratios by one common factor, which keeps their proportions.

Updates are also anchored: with ``max_drift`` each ratio stays within a factor
``1 + max_drift`` of the prior over today's data sizes.  Without an anchor nothing pulls a
ratio back, and the steps add up: a task raised again and again for its leaks crowds out a
big task lowered once as another's leak source, and the adapter then answers the big task
worse than on the prior for little gain on the raised one (``bench/loop.py``; on seed 67
unanchored ratios ended at 0.37 and 0.16 against priors of 0.28 and 0.29: 2.5 points fewer
greetings right for 0.5 points more festival wishes).

Ratios cover the adapter's tasks only; the share of general data retained in a shared mix
(``general_share`` in the suite) is the trainer's business.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Self

__all__ = [
    "RatioConfig",
    "RatioState",
    "add_task",
    "prior_ratios",
    "project",
    "remove_task",
    "update_ratios",
]


@dataclass(frozen=True)
class RatioConfig:
    """Hyperparameters of mixture ratios."""

    temperature: float = 2.0
    floor: float = 0.05  # every task keeps at least this share: it must not be forgotten
    cap: float = 0.7  # no task may crowd out the others entirely
    max_step: float = 0.25  # per update, a ratio moves by at most this factor (+25% / -20%)
    # Updates keep every ratio within this factor of its prior (None: no anchor).
    max_drift: float | None = 0.25
    # A rebalance that would move less of the mix than this (total variation distance, beyond
    # what following the data sizes moves anyway) is not worth a training run: its tasks sit
    # at their bounds. 0: every rebalance trains. See policies.actions.rebalance_move.
    min_move: float = 0.01

    def __post_init__(self) -> None:
        if self.temperature <= 0 or self.max_step <= 0:
            raise ValueError("temperature and max_step must be > 0")
        if self.max_drift is not None and self.max_drift <= 0:
            raise ValueError(f"max_drift must be > 0 or None (no anchor), got {self.max_drift}")
        if not 0.0 <= self.min_move < 1.0:
            raise ValueError(f"min_move must be in [0, 1), got {self.min_move}")
        if not 0.0 <= self.floor <= self.cap <= 1.0:
            raise ValueError("need 0 <= floor <= cap <= 1")

    def bounds(self, k: int) -> tuple[float, float]:
        """Floor and cap made feasible for ``k`` tasks (k*floor <= 1 <= k*cap)."""
        if k <= 0:
            return (0.0, 1.0)
        return (min(self.floor, 1.0 / k), max(self.cap, 1.0 / k))

    def to_dict(self) -> dict[str, Any]:
        return {
            "temperature": self.temperature,
            "floor": self.floor,
            "cap": self.cap,
            "max_step": self.max_step,
            "max_drift": self.max_drift,
            "min_move": self.min_move,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        kwargs: dict[str, Any] = {k: None if v is None else float(v) for k, v in data.items()}
        return cls(**kwargs)

    def band(self, prior: Mapping[str, float]) -> tuple[dict[str, float], dict[str, float]]:
        """Per-task bounds of an update: floor and cap, narrowed to ``max_drift`` around
        ``prior`` (the prior ratios of the same tasks)."""
        floor, cap = self.bounds(len(prior))
        if self.max_drift is None:
            return dict.fromkeys(prior, floor), dict.fromkeys(prior, cap)
        k = 1.0 + self.max_drift
        lower = {n: min(max(floor, p / k), cap) for n, p in prior.items()}
        upper = {n: max(min(cap, p * k), floor) for n, p in prior.items()}
        return lower, upper


@dataclass(frozen=True)
class RatioState:
    """Versioned ratios of one adapter; ``version`` grows by one at every change."""

    weights: dict[str, float] = field(default_factory=dict)
    version: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"weights": dict(sorted(self.weights.items())), "version": self.version}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        weights = {str(k): float(v) for k, v in data["weights"].items()}
        return cls(weights=weights, version=int(data["version"]))


def project(
    targets: Mapping[str, float],
    lower: Mapping[str, float],
    upper: Mapping[str, float],
) -> dict[str, float]:
    """Scale ``targets`` by one factor ``m`` and clamp into ``[lower, upper]`` so they sum to 1.

    ``sum(clamp(m * t))`` is continuous and non-decreasing in ``m``, so bisection (on a log
    scale, deterministic) finds it; requires ``sum(lower) <= 1 <= sum(upper)``.
    """
    names = sorted(targets)
    if not names:
        return {}
    lo_sum = sum(lower[n] for n in names)
    hi_sum = sum(upper[n] for n in names)
    if lo_sum > 1.0 + 1e-12 or hi_sum < 1.0 - 1e-12:
        raise ValueError("infeasible bounds for ratios")
    tiny = 1e-300
    t = {n: max(float(targets[n]), tiny) for n in names}

    def total(log_m: float) -> float:
        m = math.exp(log_m)
        return sum(min(max(m * t[n], lower[n]), upper[n]) for n in names)

    lo, hi = -700.0, 700.0
    for _ in range(200):
        mid = (lo + hi) / 2.0
        if total(mid) < 1.0:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-13:
            break
    m = math.exp((lo + hi) / 2.0)
    out = {n: min(max(m * t[n], lower[n]), upper[n]) for n in names}
    s = sum(out.values())
    # Remove the bisection's last ~1e-13 of error so the ratios sum to 1 to float precision.
    return {n: v / s for n, v in out.items()}


def prior_ratios(data_sizes: Mapping[str, float], config: RatioConfig | None = None) -> dict[str, float]:
    """Temperature prior ``p_i ∝ n_i^(1/T)`` with floor and cap, normalised.

    >>> sizes = {"a": 10000, "b": 400, "c": 100}
    >>> {k: round(v, 3) for k, v in prior_ratios(sizes, RatioConfig(cap=1.0)).items()}
    {'a': 0.769, 'b': 0.154, 'c': 0.077}
    >>> {k: round(v, 3) for k, v in prior_ratios(sizes, RatioConfig(cap=0.7)).items()}
    {'a': 0.7, 'b': 0.2, 'c': 0.1}
    """
    cfg = config or RatioConfig()
    names = sorted(data_sizes)
    if not names:
        return {}
    raw = {n: max(float(data_sizes[n]), 0.0) ** (1.0 / cfg.temperature) for n in names}
    s = sum(raw.values())
    targets = {n: raw[n] / s for n in names} if s > 0 else {n: 1.0 / len(names) for n in names}
    floor, cap = cfg.bounds(len(names))
    return project(targets, dict.fromkeys(names, floor), dict.fromkeys(names, cap))


def update_ratios(
    state: RatioState,
    pressure: Mapping[str, float],
    config: RatioConfig | None = None,
    *,
    sizes: Mapping[str, float] | None = None,
) -> RatioState:
    """One bounded multiplicative step; returns a new state with ``version + 1``.

    ``pressure[task]`` in [-1, 1]: +1 raises the task's ratio by the full ``max_step``
    factor, -1 lowers it by the same factor, before renormalisation.  Tasks without pressure
    only move through renormalisation, and never by more than the step bound either.
    With ``sizes`` (the tasks' data sizes) and ``config.max_drift``, every ratio also stays
    within ``1 + max_drift`` of the prior over those sizes; a ratio outside that band (the
    sizes changed) is first brought back inside, as one outside floor and cap is.

    >>> s = RatioState({"a": 0.5, "b": 0.3, "c": 0.2}, version=3)
    >>> s2 = update_ratios(s, {"c": 1.0, "a": -1.0})
    >>> s2.version, {k: round(v, 3) for k, v in s2.weights.items()}
    (4, {'a': 0.429, 'b': 0.321, 'c': 0.25})

    Raising ``c`` again and again moves it no further than 25 % above its prior of 1/3:

    >>> s = RatioState({"a": 1 / 3, "b": 1 / 3, "c": 1 / 3})
    >>> for _ in range(5):
    ...     s = update_ratios(s, {"c": 1.0}, sizes={"a": 100, "b": 100, "c": 100})
    >>> {k: round(v, 3) for k, v in s.weights.items()}
    {'a': 0.292, 'b': 0.292, 'c': 0.417}
    """
    cfg = config or RatioConfig()
    names = sorted(state.weights)
    if not names:
        return RatioState({}, state.version + 1)
    if sizes is None:
        floor, cap = cfg.bounds(len(names))
        band_lo, band_hi = dict.fromkeys(names, floor), dict.fromkeys(names, cap)
    else:
        band_lo, band_hi = cfg.band(prior_ratios({n: sizes.get(n, 0) for n in names}, cfg))
    # A ratio outside today's band (config or data sizes changed) is first brought back inside.
    old = state.weights
    if any(not band_lo[n] - 1e-9 <= old[n] <= band_hi[n] + 1e-9 for n in names):
        old = project(old, band_lo, band_hi)
    step = math.log1p(cfg.max_step)
    targets = {n: old[n] * math.exp(step * max(-1.0, min(1.0, float(pressure.get(n, 0.0))))) for n in names}
    grow = 1.0 + cfg.max_step
    lower = {n: max(band_lo[n], old[n] / grow) for n in names}
    upper = {n: min(band_hi[n], old[n] * grow) for n in names}
    return RatioState(project(targets, lower, upper), state.version + 1)


def remove_task(state: RatioState, task: str, config: RatioConfig | None = None) -> RatioState:
    """Drop a task (forked away); the rest keep their proportions within floor/cap."""
    cfg = config or RatioConfig()
    rest = {n: w for n, w in state.weights.items() if n != task}
    if not rest:
        return RatioState({}, state.version + 1)
    floor, cap = cfg.bounds(len(rest))
    return RatioState(project(rest, dict.fromkeys(rest, floor), dict.fromkeys(rest, cap)), state.version + 1)


def add_task(state: RatioState, task: str, share: float, config: RatioConfig | None = None) -> RatioState:
    """Add a task (merged back) at roughly ``share``; the others shrink proportionally."""
    cfg = config or RatioConfig()
    share = min(max(share, 0.0), 1.0)
    weights = {n: w * (1.0 - share) for n, w in state.weights.items() if n != task}
    weights[task] = share
    floor, cap = cfg.bounds(len(weights))
    names = list(weights)
    return RatioState(
        project(weights, dict.fromkeys(names, floor), dict.fromkeys(names, cap)), state.version + 1
    )
