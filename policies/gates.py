"""Gates and application: whether a candidate action may happen now, and doing it.

A candidate is what ``engine.decide`` wants for a task; ``blocked`` says why it cannot
happen in this run (cool-down, pending promotion, rejected version, a rebalance the mixture
has no room for, job cap, a proposal awaiting the operator), ``hold`` logs that once per kind
of block, ``propose`` stores a structural action for approval, and ``apply`` carries it out
on the state.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from policies.actions import (
    apply_fork,
    apply_merge,
    apply_rebalance,
    apply_retrain,
    apply_rollback,
    rebalance_move,
    rebalance_pressure,
)
from policies.config import PolicyConfig
from policies.decision import Action, Decision
from policies.signals import RISK_LEVELS
from policies.state import PolicyState

PRIORITY: dict[Action, int] = {"rollback": 0, "fork": 1, "rebalance": 2, "merge": 3, "retrain": 4}
TRAINING: frozenset[Action] = frozenset({"rebalance", "retrain", "fork", "merge"})
STRUCTURAL: frozenset[Action] = frozenset({"fork", "merge", "rollback"})


@dataclass
class Candidate:
    action: Action
    task: str  # primary task
    adapter: str  # adapter acted on (fork: the shared adapter it leaves)
    reason: str
    signals: dict[str, Any]
    tasks: list[str] = field(default_factory=list)  # every task concerned
    high_risk: bool = False
    target: str = ""  # merge target
    to_version: int = 0  # rollback target
    wait: str = ""  # why the evidence cannot decide yet: the candidate is held ("evidence")

    def sort_key(self, st: PolicyState) -> tuple[int, int, str, str]:
        risk = max(RISK_LEVELS.index(st.tasks[t].profile.risk) for t in self.tasks)
        return (PRIORITY[self.action], -risk, self.adapter, self.task)


def blocked(
    st: PolicyState, c: Candidate, now: float, config: PolicyConfig, slots: int
) -> tuple[str, str] | None:
    """Why ``c`` cannot happen now, as (kind, explanation), or ``None``."""
    if c.wait:
        return ("evidence", c.wait)
    for p in st.pending:
        if p["action"] == c.action and p["task"] == c.task:
            return ("proposal", f"awaiting operator approval of proposal #{p['seq']}")
    if c.action == "rollback":
        return None  # a bad promotion is undone at once, cool-down or not
    if c.action in ("fork", "merge"):
        until = st.tasks[c.task].cooldown_until
        if until > now:
            return ("task-cooldown", f"cool-down of {c.task} for another {until - now:.0f}s")
    adapter = c.target or c.adapter
    if c.action == "merge" and (since := st.adapters[c.adapter].pending_since) is not None:
        # The isolated adapter's job would route its version after the task left it.
        return ("pending", f"{c.adapter} still waiting for the job started at t={since:.0f} "
                "to be promoted")
    if c.action != "fork":
        ad = st.adapters[adapter]
        if ad.pending_since is not None:
            return ("pending", f"{adapter} still waiting for the job started at "
                    f"t={ad.pending_since:.0f} to be promoted")  # fmt: skip
        if ad.cooldown_until > now:
            return ("cooldown", f"cool-down of {adapter} for another "
                    f"{ad.cooldown_until - now:.0f}s")  # fmt: skip
        missing = 0 if ad.retry_at_data is None else ad.retry_at_data - ad.data_size(st.tasks)
        if missing > 0:
            return ("rejected", f"{adapter}'s last version was rejected; it trains again "
                    f"with {missing} more examples")  # fmt: skip
    if c.action == "rebalance" and (why := _saturated(st, c, config)) is not None:
        return ("saturated", why)
    if c.action in TRAINING and slots <= 0:
        return ("job-cap", f"job cap: {config.max_concurrent_jobs} training job(s) at most")
    return None


def _saturated(st: PolicyState, c: Candidate, config: PolicyConfig) -> str | None:
    """Why a rebalance would be a training run for nothing, or ``None``: its tasks sit at
    their ratio bounds, so it would move less than ``RatioConfig.min_move`` of the mix.
    Only for tasks that are never forked after rebalances (by default low risk): a task
    that can be must have its rebalances, which are the way to its fork. The adapter's
    retrains on new data go on, and they self-audit its leaking tasks (``audit_flags``)."""
    floor = config.ratios.min_move
    if floor <= 0 or any(config.for_risk(st.tasks[t].profile.risk).fork_after_rebalances
                         is not None for t in c.tasks):
        return None
    pressure, _ = rebalance_pressure(st, c.adapter, c.tasks, config)
    move, _ = rebalance_move(st, c.adapter, pressure, config)
    if move >= floor:
        return None
    return (f"the mixture is at its bounds: this rebalance would move {move:.2%} of it "
            f"(min_move {floor:.0%})")


def hold(st: PolicyState, c: Candidate, why: tuple[str, str], now: float) -> Decision | None:
    # Log a blocked action once per (action, kind of block), not on every run.
    kind, text = why
    key = f"{c.action}:{kind}"
    ts = st.tasks[c.task]
    if ts.last_hold == key:
        return None
    ts.last_hold = key
    sig = {**c.signals, "wanted": c.action, "blocked_by": kind}
    reason = f"hold {c.action} ({c.reason}): {text}"
    return Decision(st.next_seq(), now, "hold", c.task, c.adapter, reason, sig)


def propose(st: PolicyState, c: Candidate, now: float) -> Decision:
    sig = dict(c.signals)
    adapter = c.adapter
    if c.action == "merge":
        adapter = c.target
    if c.action == "rollback":
        sig["to_version"] = c.to_version
    d = Decision(st.next_seq(), now, c.action, c.task, adapter, c.reason, sig, status="proposed")
    st.pending.append(d.to_dict())
    return d


def apply(st: PolicyState, c: Candidate, now: float, config: PolicyConfig) -> Decision:
    kw: dict[str, Any] = {"now": now, "config": config, "reason": c.reason}
    if c.action == "rollback":
        return apply_rollback(st, c.adapter, c.task, c.to_version, signals=c.signals, **kw)
    if c.action == "fork":
        return apply_fork(st, c.task, signals=c.signals, **kw)
    if c.action == "rebalance":
        return apply_rebalance(st, c.adapter, c.tasks, **kw)
    if c.action == "merge":
        return apply_merge(st, c.task, c.target, signals=c.signals, **kw)
    return apply_retrain(st, c.adapter, c.task, signals=c.signals, **kw)
