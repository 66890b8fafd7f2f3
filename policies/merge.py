"""Merging an isolated task back: whether it is compatible with the adapter it left, and
whether its answers prove it clean enough to go back now.

Sharing is the default the engine starts from: at bootstrap a pair shares unless its
measured affinity is negative beyond the measurement's noise. A merge asks the same of the
pair, measured in both directions, so an isolated task goes back to the state the engine would
choose for it from scratch. The measurement goes on after a fork: every training run the
engine starts for the adapter a task left probes the task too (``observed_tasks``; its
examples join the lookahead probes, never a training batch), so a fork made on an early
estimate, such as the first run's on an untrained adapter, is revisited as the adapter
learns. What a merge risks is guarded elsewhere: the task's own answers must bound its leak
rate below the rate that counts as a leak, and the merged version is promoted only if the
gate finds no task worse beyond its tolerance; if the gate rejects it, the merge is undone
(``unmerge``) and the task goes back to the adapter that still serves it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from policies.actions import audit_flags, task_numbers
from policies.config import PolicyConfig
from policies.decision import Decision
from policies.gates import Candidate
from policies.mixture import tally_key
from policies.ratios import remove_task
from policies.signals import leak_bounds, pair_verdict
from policies.state import AdapterState, PolicyState

__all__ = ["compatible", "compatible_with_origin", "merge_candidate", "observed_tasks", "unmerge"]


def compatible_with_origin(
    st: PolicyState, task: str, config: PolicyConfig, aff: Mapping[tuple[str, str], float]
) -> bool:
    """May an isolated ``task`` go back to the adapter it was forked from? Same tone and
    similar risk as every task there, and affinity measured in both directions, neither
    negative beyond the measurement's noise (``affinity_noise``): within it an estimate is no
    evidence of harm, and on small models that is where most estimates fall."""
    ts = st.tasks[task]
    target = st.adapters.get(ts.forked_from or "")
    if target is None or not target.tasks or len(st.adapters[ts.adapter].tasks) != 1:
        return False
    for o in target.tasks:
        if aff.get((task, o)) is None or aff.get((o, task)) is None:
            return False
        if not compatible(st, task, o, config, aff, min_positive=-config.affinity_noise):
            return False
    return True


def observed_tasks(st: PolicyState, adapter: str) -> list[str]:
    """The isolated tasks forked out of ``adapter``: its training runs measure their affinity
    with its tasks (``compatible_with_origin`` reads it), without training on them.

    >>> from policies.signals import TaskProfile
    >>> from policies.state import AdapterState, init_state
    >>> from policies.ratios import RatioState
    >>> st = init_state({"shared": ["a", "b"]}, {"a": TaskProfile(), "b": TaskProfile()},
    ...                 PolicyConfig())
    >>> st.adapters["b"] = AdapterState(tasks=["b"], ratios=RatioState({"b": 1.0}, 1))
    >>> st.adapters["shared"].tasks = ["a"]
    >>> st.tasks["b"].adapter, st.tasks["b"].forked_from = "b", "shared"
    >>> observed_tasks(st, "shared"), observed_tasks(st, "b")
    (['b'], [])
    """
    return sorted(
        t for t, ts in st.tasks.items()
        if ts.forked_from == adapter and ts.adapter != adapter and ts.adapter in st.adapters
        and len(st.adapters[ts.adapter].tasks) == 1
    )  # fmt: skip


def compatible(
    st: PolicyState, a: str, b: str, config: PolicyConfig, aff: Mapping[tuple[str, str], float],
    *, min_positive: float | None = None,
) -> bool:
    """Same tone, similar risk and measured affinity of at least ``min_positive`` (default
    ``partner_min_affinity``)."""
    profiles = {t: st.tasks[t].profile for t in (a, b)}
    return pair_verdict(
        a, b, profiles, aff,
        max_negative=config.max_negative(),
        min_positive=config.partner_min_affinity if min_positive is None else min_positive,
        max_risk_gap=config.max_risk_gap,
    ).verdict == "compatible"  # fmt: skip


def merge_candidate(
    st: PolicyState, task: str, now: float, config: PolicyConfig, nums: dict[str, Any]
) -> Candidate | None:
    """A merge of isolated ``task`` back into the adapter it was forked from, once it has
    been compatible for ``merge_after_s``; held (``wait``) while its answers do not yet prove
    it clean. None: no merge wanted."""
    ts = st.tasks[task]
    if ts.compatible_since is None or ts.forked_from is None:
        return None
    compatible_for = now - ts.compatible_since
    isolated_for = now - (ts.isolated_since if ts.isolated_since is not None else now)
    if compatible_for < config.merge_after_s or isolated_for < config.min_isolation_s:
        return None
    if ts.detector.degraded or ts.window.leaking or ts.regressions:
        return None
    reason = (
        f"compatible with {', '.join(st.adapters[ts.forked_from].tasks)} for "
        f"{duration(compatible_for)} (same tone, similar risk, no negative affinity beyond noise)"
    )
    # No crosstalk, proven: the leak rate's upper bound (z = fork_leak_z, false flags
    # discounted) below the rate that counts as a leak, over the task's window or, for a
    # high-risk task, its tally across its own adapter's versions when that holds more.
    win = ts.window
    own = ts.mixture_of == tally_key(ts.adapter, st.adapters[ts.adapter].ratios.version, ts)
    tally = ts.mixture if own and ts.mixture.n > win.n else win
    k, n = tally.crosstalk, tally.n
    upper = leak_bounds(k, n, config.fork_leak_z, config.crosstalk_false_flags)[1]
    sig = {**nums, "compatible_for_s": compatible_for, "isolated_for_s": isolated_for,
           "crosstalk": [k, n], "leak_upper": round(upper, 6)}
    wait = ""
    if n < config.crosstalk_min_events or upper >= win.high:
        wait = (f"not enough evidence of no crosstalk: {k}/{n} of {task}'s answers flagged, "
                f"upper bound {upper:.1%} >= {win.high:.1%}")
    return Candidate("merge", task, ts.adapter, reason, sig, [task],
                      ts.profile.risk == "high", target=ts.forked_from, wait=wait)  # fmt: skip


def unmerge(st: PolicyState, now: float, config: PolicyConfig) -> list[Decision]:
    """Undo, in place, every merge whose merged version the gate rejected: the task goes back
    to the adapter it left, which never stopped serving it, so nothing trains (a fork of
    fresh weights would throw that adapter away). Applied at once, whatever the cool-downs:
    it restores what serves. Its pair must be compatible for another ``merge_after_s``
    before the next merge."""
    out: list[Decision] = []
    for target, ad in sorted(st.adapters.items()):
        for task, parked in sorted(ad.merging.items()):
            if not parked["rejected"]:
                continue
            del ad.merging[task]
            name = str(parked["adapter"])
            ad.tasks = [t for t in ad.tasks if t != task]
            ad.ratios = remove_task(ad.ratios, task, config.ratios)
            ad.retry_at_data = None  # its next version is another mixture (as after a fork)
            st.adapters[name] = iso = AdapterState.from_dict(parked["state"])
            ts = st.tasks[task]
            ts.adapter, ts.forked_from = name, target
            ts.isolated_since = parked["isolated_since"]
            ts.compatible_since = None
            ts.regressions = 0
            out.append(Decision(
                st.next_seq(), now, "fork", task, name,
                f"the gate rejected the version of {target} that merged {task} back: "
                f"{task} returns to {name}, which still serves it",
                {"tasks": {task: task_numbers(st, task)}, "from_adapter": target,
                 "unmerge": True, "audit": audit_flags(st, name, config)},
                ratios=dict(iso.ratios.weights), ratio_version=iso.ratios.version,
            ))  # fmt: skip
    return out


def duration(seconds: float) -> str:
    """``seconds`` in the largest unit that keeps it at least 1 (days, hours, seconds)."""
    if seconds >= 86400:
        return f"{seconds / 86400:.1f} days"
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds:.0f} s"
