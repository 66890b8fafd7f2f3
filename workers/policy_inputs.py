"""What a policy tick reads before it decides: the stored engine state, the feedback that
arrived since the last tick, and what training did (promotions, rejections, eval
regressions, measured affinity). Each function works inside the tick's SQL transaction.
"""

from __future__ import annotations

from typing import Any

from sqlmodel import Session

import policies
from policies import PolicyConfig, PolicyState, TaskProfile
from policies.events import observe_unrated
from policies.tick import TickState
from policies.windows import Origin
from storage import crud
from storage import tick as store
from storage.models import PolicyStateRow
from storage.suite import Suite
from storage.versions import get_version
from workers.auto_crosstalk import AutoSource
from workers.training.gate import paired_se  # plain arithmetic, no torch


def parse_adapter(value: str | None) -> tuple[str | None, int | None]:
    """``shared@7`` -> ("shared", 7)."""
    if not value or "@" not in value:
        return value, None
    name, _, ver = value.rpartition("@")
    return name, int(ver) if ver.isdigit() else None


def load_state(session: Session, config: PolicyConfig,
               sizes: dict[str, int]) -> tuple[PolicyState, TickState]:
    """The stored engine state and the tick's bookkeeping (``policies.tick.TickState``).
    ``sizes``: ``data_sizes(...)``. The first tick creates the state from the ``Adapter``
    rows the suite made; from then on the state is the source of membership and ratios and
    the rows are its copy (``workers.policy``)."""
    row = session.get(PolicyStateRow, 1)
    tasks = {t.name: t for t in crud.list_tasks(session)}
    profiles = {n: TaskProfile(risk=t.risk, tone=t.tone) for n, t in tasks.items()}  # type: ignore[arg-type]
    if row is None or not row.state.get("engine"):
        adapters = {a.name: list(a.tasks) for a in crud.list_adapters(session)
                    if a.status == "active" and a.tasks}
        return policies.init_state(adapters, profiles, config, data_sizes=sizes), TickState()
    state = PolicyState.from_dict(row.state["engine"])
    state = policies.sync_state(state, state_adapters(state), profiles, config, data_sizes=sizes)
    return state, TickState.from_dict(row.state.get("meta") or {})


def stored_observed(session: Session, adapter: str) -> list[str]:
    """The tasks a job of ``adapter`` observes (``policies.observed_tasks``) as the stored
    engine state has them, for a job started outside a tick (``adaptd train``); none before
    the first tick."""
    row = session.get(PolicyStateRow, 1)
    if row is None or not row.state.get("engine"):
        return []
    return policies.observed_tasks(PolicyState.from_dict(row.state["engine"]), adapter)


def state_adapters(state: PolicyState) -> dict[str, list[str]]:
    return {name: list(ad.tasks) for name, ad in state.adapters.items()}


def feedback_examples(session: Session) -> dict[str, int]:
    """Usable training examples from feedback (accepted outputs, corrections) per task."""
    return store.feedback_example_counts(session)


def data_sizes(suite: Suite, fed: dict[str, int]) -> dict[str, int]:
    """Training examples per task: the suite's seed data plus ``feedback_examples``."""
    return {t: suite.examples_per_task + fed.get(t, 0) for t in suite.tasks}


def observe_new_events(session: Session, state: PolicyState, limit: int,
                       auto: AutoSource | None = None) -> int:
    """Feed unobserved feedback to the detectors and windows. A user's crosstalk flag is
    taken as is; an output nobody flagged is checked by ``auto`` (origin ``auto``). An
    unrated answer goes to ``observe_unrated``: crosstalk evidence when ``auto`` checks it,
    never a verdict."""
    rows = store.unobserved_events(session, limit=limit)
    found: dict[crud.CounterKey, float] = {}

    def check(task: str, output: str) -> str | None:
        assert auto is not None
        hit = auto(task, output)
        if hit is not None:
            key = crud.counter_key("adaptd_crosstalk_events_total",
                                   {"task": task, "source_task": hit, "origin": "auto"})
            found[key] = found.get(key, 0.0) + 1
        return hit

    for ev in rows:
        if ev.task not in state.tasks:
            continue
        if ev.verdict == "unrated":
            observe_unrated(state, ev.task, checked=auto is not None,
                            crosstalk_source=check(ev.task, ev.output) if auto else None)
            continue
        adapter, version = parse_adapter(ev.adapter)
        source: str | None = ev.crosstalk_source
        origin: Origin = "user"
        if source is None and auto is not None:
            source, origin = check(ev.task, ev.output), "auto"
        policies.observe(state, ev.task, ev.verdict == "accept", crosstalk_source=source,
                         origin=origin, adapter=adapter, version=version)
    crud.add_counters(session, increments=found)
    store.mark_observed(session, ids=[ev.id for ev in rows])
    return len(rows)


def account_finished_jobs(session: Session, state: PolicyState, tick: TickState,
                          config: PolicyConfig, now: float) -> tuple[PolicyState, int]:
    """Tell the engine about promotions, rejections and failures since the last tick (jobs
    after ``tick.jobs_seen``; measured affinity is folded into ``tick.affinity``). Returns
    the state and the id up to which every job is now accounted for."""
    seen = tick.jobs_seen
    for job in store.finished_jobs_after(session, seen=seen):
        # Only advance past a contiguous prefix: a lower job still running is seen later.
        assert job.id is not None
        if store.open_jobs_between(session, above=seen, below=job.id):
            break
        seen = job.id
        if job.adapter not in state.adapters:
            continue
        version = get_version(session, adapter=job.adapter, version=job.result_version)
        if version is not None and version.eval:
            # The run's TAG affinity (promoted or not: it describes training, not the gate).
            measured = (version.eval.get("train") or {}).get("affinity")
            if measured:
                tick.affinity = policies.fold_affinity(tick.affinity, measured)
            before = _qualities(version.eval.get("production"))
            after = _qualities(version.eval.get("candidate"))
            if before and after:
                targeted = tuple(job.params.get("targeted") or ())
                se = _paired_se(version.eval.get("production"), version.eval.get("candidate"))
                state, _ = policies.record_eval(state, job.adapter, before=before, after=after,
                                                config=config, targeted=targeted, se=se)
        if job.status == "succeeded" and job.result_version is not None:
            state = policies.on_promotion(state, job.adapter, version=job.result_version,
                                          now=now, config=config)
        elif job.status == "rejected":
            state = policies.on_rejection(state, job.adapter, now=now, config=config)
        else:
            state = policies.clear_pending(state, job.adapter)
    return state, seen


def _paired_se(production: Any, candidate: Any) -> dict[str, float | None]:
    """Per task, the standard error of the candidate-minus-production score difference over
    the same eval prompts (the gate's ``paired_se``; None where the scores do not pair)."""
    prod = (production or {}).get("tasks") or {}
    cand = (candidate or {}).get("tasks") or {}
    return {t: paired_se(c.get("scores"), (prod.get(t) or {}).get("scores"))
            for t, c in cand.items() if isinstance(c, dict)}


def _qualities(side: Any) -> dict[str, float]:
    tasks = (side or {}).get("tasks") or {}
    return {t: float(r["quality"]) for t, r in tasks.items()
            if isinstance(r, dict) and r.get("quality") is not None}
