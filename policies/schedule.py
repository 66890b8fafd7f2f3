"""Decisions about whole adapters, made before the engine's per-task rules.

- **First versions.** An adapter whose tasks nobody serves yet trains before anything else.
  A first version the gate keeps rejecting is tried ``BOOTSTRAP_TRIES`` times, each try with
  its own seed (a retry on the same data with the same seed would train the same weights and
  meet the same verdict); then its tasks stay on the base model and one ``hold`` says so.
  A forked adapter's task is still served by its old adapter until the fork is promoted, so a
  rejected fork is not "bootstrapped" over and over.
- **Retrains after a base rebuild.** An adapter serving a version trained on another base
  build (or prompt format) cannot be served any more: it retrains once, with the same give-up
  rule as a first version.
- **The baseline policies** of ``adaptd simulate`` (``static``, ``uniform``, ``isolated``):
  retrain each adapter once its tasks buffered ``min_new_examples``, on data-proportional
  (static, isolated) or equal (uniform) ratios, never fork, and judge a shared adapter's
  version by its average (``{"gate": {"mode": "mean"}}``).

Every function is pure: it takes what the policy tick read (:class:`AdapterFacts`, buffers,
data sizes) and returns :class:`~policies.decision.Decision` objects whose ``job`` holds the
parameters of the training job to start, plus the updated give-up bookkeeping.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from policies.config import PolicyConfig
from policies.decision import Decision
from policies.ratios import prior_ratios

__all__ = [
    "BOOTSTRAP_TRIES",
    "MODES",
    "AdapterFacts",
    "StaleServing",
    "baseline_gate",
    "bootstrap_decisions",
    "rebuild_decisions",
    "schedule_decisions",
    "schedule_ratios",
]

MODES = ("adaptive", "static", "uniform", "isolated")
BOOTSTRAP_TRIES = 3


@dataclass(frozen=True)
class AdapterFacts:
    """What the tick knows of one adapter of the engine's state."""

    name: str
    tasks: tuple[str, ...]
    promoted: bool = False  # some version of it has been promoted
    failed_bootstraps: int = 0  # first-version jobs that ended without a promotion
    failed_rebuilds: int = 0  # retrains on the current base build that ended so
    ratios: Mapping[str, float] = field(default_factory=dict)  # its stored mixture ratios


@dataclass(frozen=True)
class StaleServing:
    """An adapter serving a version the current base build cannot load."""

    adapter: str
    version: int  # the served version
    build: str  # the base build it was trained on
    tasks: tuple[str, ...]  # the tasks routed to it
    reason: str  # why it cannot be served, for the decision's reason


def schedule_ratios(mode: str, tasks: Sequence[str], sizes: Mapping[str, int]) -> dict[str, float]:
    """Baseline ratios: equal (``uniform``) or data-proportional (the others).

    >>> schedule_ratios("uniform", ["a", "b"], {"a": 30, "b": 10})
    {'a': 0.5, 'b': 0.5}
    >>> schedule_ratios("static", ["a", "b"], {"a": 30, "b": 10})
    {'a': 0.75, 'b': 0.25}
    """
    if mode == "uniform":
        return {t: 1.0 / len(tasks) for t in tasks}
    total = sum(sizes.get(t, 0) for t in tasks) or 1
    return {t: sizes.get(t, 0) / total for t in tasks}


def baseline_gate(mode: str) -> dict[str, Any]:
    """Job params for the shared-adapter baselines, which judge a version by its average.

    >>> baseline_gate("static"), baseline_gate("adaptive")
    ({'gate': {'mode': 'mean'}}, {})
    """
    return {"gate": {"mode": "mean"}} if mode in ("static", "uniform") else {}


def _first_ratios(mode: str, tasks: Sequence[str], sizes: Mapping[str, int],
                  config: PolicyConfig) -> dict[str, float]:
    if mode == "adaptive":
        return prior_ratios({t: sizes.get(t, 0) for t in tasks}, config.ratios)
    return schedule_ratios(mode, tasks, sizes)


def _retrain(adapter: str, reason: str, now: float, signals: dict[str, Any],
             job: dict[str, Any], tries: int = 0) -> Decision:
    if tries:
        job["train"] = {"seed": tries}  # each retry draws its own batches and LoRA init
    return Decision(seq=0, at=now, action="retrain", task="", adapter=adapter, reason=reason,
                    signals=signals, train=(adapter,), job=job)


def _hold(adapter: str, reason: str, now: float, signals: dict[str, Any]) -> Decision:
    return Decision(seq=0, at=now, action="hold", task="", adapter=adapter, reason=reason,
                    signals=signals)


def bootstrap_decisions(
    adapters: Sequence[AdapterFacts], *, routed: Collection[str], busy: Collection[str],
    running: int, mode: str, sizes: Mapping[str, int], config: PolicyConfig, now: float,
    given_up: Mapping[str, float],
) -> tuple[list[Decision], dict[str, float]]:
    """A first version for each adapter with tasks nobody serves (``routed``: the tasks with a
    route) and no promoted version, unless a job of it is ``busy``; ``running``: jobs queued
    or running. Returns the decisions and ``given_up`` (adapter -> when it was given up)
    with the adapters given up now added.

    >>> cfg = PolicyConfig()
    >>> facts = [AdapterFacts("shared", ("a", "b")), AdapterFacts("solo", ("c",),
    ...                                                          failed_bootstraps=3)]
    >>> ds, gave = bootstrap_decisions(facts, routed=(), busy=(), running=0, mode="static",
    ...                                sizes={"a": 30, "b": 10}, config=cfg, now=5.0,
    ...                                given_up={})
    >>> [(d.action, d.adapter, d.reason[:14]) for d in ds], gave
    ([('retrain', 'shared', 'bootstrap: no '), ('hold', 'solo', 'hold bootstrap')], {'solo': 5.0})
    >>> ds[0].job
    {'tasks': ['a', 'b'], 'ratios': {'a': 0.75, 'b': 0.25}, 'bootstrap': True, 'gate': {'mode': 'mean'}}
    """
    given_up = dict(given_up)
    out: list[Decision] = []
    started = 0
    for ad in sorted(adapters, key=lambda a: a.name):
        unserved = [t for t in ad.tasks if t not in routed]
        if not unserved or ad.name in busy or ad.promoted:
            continue
        tries = ad.failed_bootstraps
        if tries >= BOOTSTRAP_TRIES:
            if not given_up.get(ad.name):
                given_up[ad.name] = now
                out.append(_hold(ad.name, f"hold bootstrap: {tries} first versions of "
                                 f"{ad.name} were rejected; {unserved} stay on the base model",
                                 now, {"tries": tries, "unserved": unserved}))
            continue
        if running + started < max(1, config.max_concurrent_jobs):
            tasks = list(ad.tasks)
            ratios = _first_ratios(mode, tasks, sizes, config)
            out.append(_retrain(ad.name, "bootstrap: no promoted version yet", now,
                                {"tasks": tasks, "ratios": ratios},
                                {"tasks": tasks, "ratios": ratios, "bootstrap": True,
                                 **baseline_gate(mode)}, tries))
            started += 1
    return out, given_up


def rebuild_decisions(
    stale: Sequence[StaleServing], adapters: Mapping[str, AdapterFacts], *, build: str,
    busy: Collection[str], running: int, mode: str, sizes: Mapping[str, int],
    config: PolicyConfig, now: float, given_up: Mapping[str, str],
) -> tuple[list[Decision], dict[str, str]]:
    """One retrain per adapter in ``stale`` (serving a version base build ``build`` cannot
    load), on the adapter's current ratios (a baseline's: its schedule's), unless a job of
    it is ``busy``. After ``BOOTSTRAP_TRIES`` rejected tries on this build, one hold. Returns
    the decisions and ``given_up`` (adapter -> the build it was given up on) updated.

    >>> facts = {"shared": AdapterFacts("shared", ("a", "b"), ratios={"a": 0.6, "b": 0.4})}
    >>> old = StaleServing("shared", 3, "tiny-old", ("a", "b"), "base rebuilt")
    >>> ds, _ = rebuild_decisions([old], facts, build="tiny-new", busy=(), running=0,
    ...                           mode="adaptive", sizes={}, config=PolicyConfig(), now=1.0,
    ...                           given_up={})
    >>> [(d.action, d.adapter, d.reason) for d in ds], ds[0].job["ratios"], ds[0].job["rebuild"]
    ([('retrain', 'shared', 'base rebuilt')], {'a': 0.6, 'b': 0.4}, 'tiny-new')
    """
    given_up = dict(given_up)
    out: list[Decision] = []
    started = 0
    done: set[str] = set()
    for s in stale:
        ad = adapters.get(s.adapter)
        if ad is None or not ad.tasks or s.adapter in busy or s.adapter in done:
            continue
        tries = ad.failed_rebuilds
        if tries >= BOOTSTRAP_TRIES:
            if given_up.get(ad.name) != build:
                given_up[ad.name] = build
                out.append(_hold(ad.name, f"hold rebuild: {tries} versions of {ad.name} on base "
                                 f"build {build!r} were rejected; {', '.join(s.tasks)} stay "
                                 f"unservable", now, {"tries": tries, "build": build}))
            continue
        if running + started >= max(1, config.max_concurrent_jobs):
            break
        tasks = list(ad.tasks)
        if mode != "adaptive":
            ratios = schedule_ratios(mode, tasks, sizes)
        elif ad.ratios:
            ratios = dict(ad.ratios)  # the engine's current mixture for this adapter
        else:
            ratios = prior_ratios({t: sizes.get(t, 0) for t in tasks}, config.ratios)
        out.append(_retrain(ad.name, s.reason, now,
                            {"served_version": s.version, "served_build": s.build,
                             "build": build, "tasks": tasks, "ratios": ratios},
                            {"tasks": tasks, "ratios": ratios, "rebuild": build,
                             **baseline_gate(mode)}, tries))
        started += 1
        done.add(ad.name)
    return out, given_up


def schedule_decisions(
    adapters: Sequence[AdapterFacts], *, buffers: Mapping[str, int], busy: Collection[str],
    running: int, mode: str, sizes: Mapping[str, int], config: PolicyConfig, now: float,
) -> list[Decision]:
    """A baseline policy's retrains: each adapter not ``busy`` whose tasks buffered
    ``config.min_new_examples``, while fewer than ``config.max_concurrent_jobs`` run.

    >>> facts = [AdapterFacts("a", ("x",)), AdapterFacts("b", ("y", "z"))]
    >>> ds = schedule_decisions(facts, buffers={"y": 150, "z": 60}, busy=(), running=0,
    ...                         mode="uniform", sizes={}, config=PolicyConfig(), now=0.0)
    >>> [(d.adapter, d.reason, d.job["ratios"]) for d in ds]
    [('b', 'schedule (uniform): 210 new examples', {'y': 0.5, 'z': 0.5})]
    """
    if mode not in MODES or mode == "adaptive":
        raise ValueError(f"schedule_decisions is for the baseline modes, not {mode!r}")
    out: list[Decision] = []
    for ad in sorted(adapters, key=lambda a: a.name):
        new = sum(buffers.get(t, 0) for t in ad.tasks)
        if (ad.name in busy or new < config.min_new_examples
                or running + len(out) >= config.max_concurrent_jobs):
            continue
        tasks = list(ad.tasks)
        ratios = schedule_ratios(mode, tasks, sizes)
        out.append(_retrain(ad.name, f"schedule ({mode}): {new} new examples", now,
                            {"new_examples": new, "ratios": ratios},
                            {"tasks": tasks, "ratios": ratios, **baseline_gate(mode)}))
    return out
