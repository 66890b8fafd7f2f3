"""The serving reconcile decision (docs/contracts.md section 11): pure, no I/O.

Given what should be served (the routing table, versions waiting to be routed, each adapter's
last good version) and what each replica reported, decide what every replica loads and
unloads, and which waiting versions are routed now, refused, or still wait.

A version is served as ``<adapter>-v<N>`` and never reloaded in place under an older name.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

SERVED_RE = re.compile(r"^(?P<adapter>[a-z][a-z0-9_-]{0,62})-v(?P<version>[1-9][0-9]{0,8})\Z")

Why = Literal["routed", "pending", "fallback"]
Verdict = Literal["route", "refuse", "wait"]


def served_name(adapter: str, version: int) -> str:
    """The name a version is served under; refuses names that are not ``<adapter>-v<N>``.

    >>> served_name("shared", 3)
    'shared-v3'
    >>> served_name("../x", 1)
    Traceback (most recent call last):
    ...
    ValueError: not a servable adapter version: '../x' v1
    """
    name = f"{adapter}-v{version}"
    if not SERVED_RE.match(name) or int(version) < 1:
        raise ValueError(f"not a servable adapter version: {adapter!r} v{version}")
    return name


def parse_served(name: str) -> tuple[str, int] | None:
    """``(adapter, version)`` of a served name, or None for names adaptd does not manage.

    >>> parse_served("apology-fork-v12"), parse_served("base"), parse_served("x-v0")
    (('apology-fork', 12), None, None)
    """
    m = SERVED_RE.match(name)
    return (m["adapter"], int(m["version"])) if m else None


@dataclass(frozen=True)
class Want:
    """A version a replica must hold, and why."""

    served_as: str
    adapter: str
    version: int
    path: str
    why: Why


@dataclass(frozen=True)
class Pending:
    """A promoted version waiting to be routed (a rollout)."""

    id: int
    adapter: str
    version: int
    path: str


@dataclass(frozen=True)
class Candidate:
    """A promoted version of an adapter: what a rollback could route."""

    adapter: str
    version: int
    path: str


def wanted(routes: Iterable[tuple[str, int, str]], pending: Iterable[Pending],
           promoted: Iterable[Candidate], refused: Iterable[str] = ()) -> dict[str, Want]:
    """Every version a replica should hold: each routed version, each pending one, and per
    routed adapter its newest promoted version below the routed one (the instant rollback).
    ``refused``: served names some replica refused; they are never wanted again.

    >>> w = wanted([("shared", 3, "/a/shared/v3")], [Pending(9, "shared", 4, "/a/shared/v4")],
    ...            [Candidate("shared", v, f"/a/shared/v{v}") for v in (1, 2, 3, 4)])
    >>> [(k, w[k].why) for k in sorted(w)]
    [('shared-v2', 'fallback'), ('shared-v3', 'routed'), ('shared-v4', 'pending')]
    >>> sorted(wanted([("shared", 3, "/p")], [], [Candidate("shared", 2, "/q")], ["shared-v2"]))
    ['shared-v3']
    """
    refused_set = set(refused)
    out: dict[str, Want] = {}
    routed_at: dict[str, int] = {}
    for adapter, version, path in routes:
        name = served_name(adapter, version)
        out[name] = Want(name, adapter, version, path, "routed")
        routed_at[adapter] = max(routed_at.get(adapter, 0), version)
    for p in pending:
        name = served_name(p.adapter, p.version)
        if name not in refused_set:
            out.setdefault(name, Want(name, p.adapter, p.version, p.path, "pending"))
    best: dict[str, Candidate] = {}
    for c in promoted:
        top = routed_at.get(c.adapter)
        name = served_name(c.adapter, c.version)
        if top is None or c.version >= top or name in refused_set:
            continue
        if c.adapter not in best or c.version > best[c.adapter].version:
            best[c.adapter] = c
    for c in best.values():
        name = served_name(c.adapter, c.version)
        out.setdefault(name, Want(name, c.adapter, c.version, c.path, "fallback"))
    return out


@dataclass
class ReplicaPlan:
    """What one replica must do now, and its new unwanted-since marks."""

    load: list[Want] = field(default_factory=list)
    unload: list[str] = field(default_factory=list)
    unwanted_since: dict[str, float] = field(default_factory=dict)


def managed(name: str, adapters: Iterable[str]) -> bool:
    """Whether adaptd manages a served name: ``<adapter>-v<N>`` of one of its adapters.

    >>> managed("s-v1", ["s"]), managed("base", ["s"]), managed("mine-v1", ["s"])
    (True, False, False)
    """
    parsed = parse_served(name)
    return parsed is not None and parsed[0] in set(adapters)


def plan_replica(want: Mapping[str, Want], held: Iterable[str], *, refused: Iterable[str],
                 unwanted_since: Mapping[str, float], now: float, grace_s: float,
                 adapters: Iterable[str]) -> ReplicaPlan:
    """Load what is wanted and missing (except what this replica refused); unload a held
    name of one of ``adapters`` once it has been unwanted for ``grace_s`` (in-flight
    requests finish). Other names (the base model, an operator's own adapters) are left
    alone.

    >>> w = {"s-v2": Want("s-v2", "s", 2, "/p2", "routed")}
    >>> p = plan_replica(w, ["base", "s-v1", "x-v1"], refused=[], unwanted_since={}, now=10.0,
    ...                  grace_s=5, adapters=["s"])
    >>> [x.served_as for x in p.load], p.unload, p.unwanted_since
    (['s-v2'], [], {'s-v1': 10.0})
    >>> p = plan_replica(w, ["s-v1", "s-v2"], refused=[], unwanted_since={"s-v1": 10.0},
    ...                  now=15.0, grace_s=5, adapters=["s"])
    >>> p.load, p.unload, p.unwanted_since
    ([], ['s-v1'], {})
    """
    known = set(adapters)
    held_set = set(held)
    refused_set = set(refused)
    plan = ReplicaPlan()
    for name in sorted(want):
        if name not in held_set and name not in refused_set:
            plan.load.append(want[name])
    for name in sorted(held_set):
        if name in want or not managed(name, known):
            continue
        since = unwanted_since.get(name, now)
        if now - since >= grace_s:
            plan.unload.append(name)
        else:
            plan.unwanted_since[name] = since
    return plan


@dataclass(frozen=True)
class ReplicaReport:
    """What a replica said after this round's loads: reachable or not, the names it lists,
    and the names it refused (with the reason it gave)."""

    replica: str
    reachable: bool
    held: frozenset[str] = frozenset()
    refused: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class RolloutVerdict:
    rollout_id: int
    verdict: Verdict
    reason: str


def judge_rollouts(pending: Sequence[Pending], reports: Sequence[ReplicaReport]
                   ) -> list[RolloutVerdict]:
    """Route a pending version once every reachable replica lists it; refuse it when a
    reachable replica refused it (the route stays on the version it serves); otherwise wait.
    Unreachable replicas do not hold a version back (they are reconciled when they answer).

    >>> up = ReplicaReport("a", True, frozenset({"s-v2"}))
    >>> down = ReplicaReport("b", False)
    >>> no = ReplicaReport("c", True, frozenset(), {"s-v2": "rank 32 > 16"})
    >>> p = [Pending(1, "s", 2, "/p")]
    >>> [v.verdict for v in (judge_rollouts(p, [up, down]) + judge_rollouts(p, [up, no])
    ...                      + judge_rollouts(p, [ReplicaReport("d", True)]))]
    ['route', 'refuse', 'wait']
    >>> judge_rollouts(p, [up, no])[0].reason
    'replica c refused s-v2: rank 32 > 16'
    """
    out = []
    for p in pending:
        name = served_name(p.adapter, p.version)
        live = [r for r in reports if r.reachable]
        refusals = [f"replica {r.replica} refused {name}: {r.refused[name]}"
                    for r in live if name in r.refused]
        missing = [r.replica for r in live if name not in r.held]
        if refusals:
            out.append(RolloutVerdict(p.id, "refuse", "; ".join(refusals)))
        elif not missing:
            where = ", ".join(r.replica for r in live) or "no reachable replica"
            out.append(RolloutVerdict(p.id, "route", f"{name} listed by {where}"))
        else:
            out.append(RolloutVerdict(p.id, "wait", f"{name} not yet listed by "
                                      f"{', '.join(missing)}"))
    return out
