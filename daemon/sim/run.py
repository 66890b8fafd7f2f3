"""`adaptd simulate`: the whole loop, end to end, on a scenario.

A local stack (API, workers, beat) runs the chosen policy; the app simulator sends the
scenario's traffic through the real API and generates with whatever ``/v1/routing`` names.
By default the simulation is *synchronous*: after each chunk of requests it waits until the
daemon has drained, observed, trained and accounted the training, and the engine's clock
counts requests instead of seconds, so the decisions do not depend on how fast this machine
trains. ``--no-sync`` lets traffic run on while training happens, on the wall clock, as in
production.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import yaml
from rich.console import Console
from rich.table import Table

from daemon.live import LiveView
from daemon.settings import Settings
from daemon.sim.app import AppSimulator, Tally
from daemon.sim.feedback import FeedbackSpec
from daemon.sim.scenario import load_scenario
from daemon.sim.serving import serving_plan
from daemon.stack import LocalStack
from storage.suite import Suite

POLICIES = ("adaptive", "static", "uniform", "isolated")

# Time-based settings of the engine scaled down to a simulation that lasts minutes.
# A synchronous run also puts the engine on an event clock (``PolicyConfig.seconds_per_event``):
# SIM_SECONDS_PER_EVENT per request, about the pace of the demo on a 2-core machine with its
# training included, so rebalance patience is 800 requests and probation 2,000, on any machine
# (the same decisions on CPUs of one kind; other CPUs round floating point differently).
# A merge waits 1,200 requests of compatibility, the length of the builtin scenarios' surge
# (production's seven days against a holiday week): a task forked as a surge begins cannot
# merge back before the surge is over, one forked during it merges back after it.
SIM_SECONDS_PER_EVENT = 0.15
# ``min_new_examples`` 300: what ``bench/loop.py`` measures the policies with, so the demo runs
# the configuration the loop bench measures.
SIM_POLICY: dict[str, Any] = {
    "cooldown_s": 0, "structural_cooldown_s": 0, "training_timeout_s": 900,
    "rebalance_patience_s": 120, "merge_after_s": 180, "min_isolation_s": 0,
    "probation_s": 300, "probation_min_events": 100, "min_new_examples": 300,
    "max_concurrent_jobs": 1, "window_size": 200, "crosstalk_min_events": 20, "warmup": 100,
}
SIM_TRAIN: dict[str, Any] = {"steps": 100, "checkpoint_every": 50}
SIM_EVAL: dict[str, Any] = {"prompts_per_task": 16, "max_new_tokens": 40}


def isolated_suite(suite: Suite, suite_ref: str, workdir: Path) -> str:
    """The same suite with one adapter per task (the ``isolated`` policy)."""
    data = suite.model_dump(mode="json", exclude={"base_dir"})
    for task in data["tasks"].values():
        if task.get("data"):
            task["data"] = str((suite.base_dir / task["data"]).resolve())
    if data.get("general_data"):
        data["general_data"] = str((suite.base_dir / data["general_data"]).resolve())
    data["adapters"] = {t: [t] for t in suite.tasks}
    path = workdir / "isolated-suite.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True, sort_keys=False), "utf-8")
    return str(path)


def run_simulation(
    settings: Settings, scenario_ref: str, *, policy: str, report_path: Path, workdir: Path,
    console: Console, sync: bool = True, chunk: int = 50, base_cache: Path | None = None,
    policy_overrides: dict[str, Any] | None = None, train_overrides: dict[str, Any] | None = None,
    on_decision: Callable[[dict[str, Any]], None] | None = None, seed: int | None = None,
    view: LiveView | None = None, serving: str = "inprocess", serving_url: str | None = None,
    feedback_overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Run ``scenario_ref`` under ``policy``; write the report JSON (+ PNG and HTML).

    ``view``: where the live progress goes (training jobs, events, waits) and, while it is
    drawn, the lines printed during the run; by default none is drawn and they go to
    ``console``. ``serving="vllm"``: the app generates through a vLLM replica the stack's
    serving sync keeps loaded, at ``serving_url`` or started from ``settings.vllm_venv``."""
    from workers.training.generate import AdapterServer  # torch only on this path

    if policy not in POLICIES:
        raise ValueError(f"policy {policy!r}: one of {POLICIES}")
    scenario, suite, suite_ref = load_scenario(scenario_ref)
    if seed is not None:
        scenario = scenario.model_copy(update={"seed": seed})
    if feedback_overrides:
        feedback = FeedbackSpec.model_validate({**scenario.feedback.model_dump(), **feedback_overrides})
        scenario = scenario.model_copy(update={"feedback": feedback})
    workdir = workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    if policy == "isolated":
        suite_ref = isolated_suite(suite, suite_ref, workdir)
    mode = policy
    t_start = time.monotonic()
    report: dict[str, Any] = {"scenario": str(scenario_ref), "policy": policy,
                              "seed": scenario.seed, "suite": suite.name, "phases": []}
    decisions: list[dict[str, Any]] = []
    clock = {"seconds_per_event": SIM_SECONDS_PER_EVENT} if sync else {}
    engine = serving_plan(serving, serving_url)
    view = view or LiveView(Console(stderr=True), enabled=False, out=console)
    now = view.bar(f"[{policy}] starting adaptd: API, workers, beat")
    with view, LocalStack(settings, workdir, suite=suite_ref, policy_mode=mode,
                          policy={**SIM_POLICY, **clock, **(policy_overrides or {})},
                          train={**SIM_TRAIN, **scenario.train, **(train_overrides or {})},
                          evaluation={**SIM_EVAL, **scenario.eval},
                          say=view.print, base_cache=base_cache,
                          serving_replicas=engine.replicas) as stack, \
            stack.watch(view), engine.running(settings, stack, say=view.print):
        assert stack.child is not None
        http = httpx.Client(timeout=120)
        seen_decision = 0

        def poll_decisions(at_event: int) -> None:
            nonlocal seen_decision
            rows = http.get(f"{stack.url}/v1/decisions", params={"limit": 1000}).json()["decisions"]
            for row in sorted(rows, key=lambda r: r["id"]):
                if row["id"] <= seen_decision:
                    continue
                seen_decision = row["id"]
                entry = {"at_event": at_event, "action": row["action"], "task": row["task"],
                         "adapter": row["adapter"], "reason": row["reason"],
                         "status": row["status"]}
                decisions.append(entry)
                if on_decision:
                    on_decision(entry)
                elif row["action"] != "hold":
                    view.print(f"  [bold]{row['action']}[/] {row['task'] or row['adapter']}: "
                               f"{row['reason']}")

        # Bootstrap: the first versions of every adapter must exist before traffic.
        view.print(f"[{policy}] training the first adapter versions (builds the base model "
                   "on first use)", markup=False)
        view.status(now, f"[{policy}] first adapter versions")
        _wait_routes(stack, http, set(suite.tasks), timeout=1800)
        engine.wait_served(stack, http, timeout=600)
        if sync:
            # The tick that accounts the bootstrap jobs may decide (a fork on the affinity they
            # measured): let it, and the job it starts, finish before the first request, or
            # whether that decision lands at event 0 or 50 depends on the machine's timing.
            stack.wait_settled(timeout=1800)
        poll_decisions(0)
        server = engine.generator(http) or AdapterServer(suite, stack.child.artifacts_dir)
        sim = AppSimulator(suite=suite, url=stack.url, secret=settings.webhook_secrets()[0],
                           generator=server, seed=scenario.seed, http=http,
                           feedback=scenario.feedback,
                           max_new_tokens=scenario.max_new_tokens)
        series: list[dict[str, Any]] = []
        total = scenario.total_events
        view.remove(now)
        bar = view.bar(f"[{policy}] events 0/{total}", total=total)
        for phase in scenario.phases:
            tallies: dict[str, Tally] = {}
            truth: dict[str, Tally] = {}
            done = 0
            while done < phase.events:
                n = min(chunk, phase.events - done)
                events = f"[{policy}] events {sim.sent}/{total}  {phase.name}"
                view.status(bar, f"{events}: sending {n} requests")
                window: dict[str, Tally] = {}
                answered: dict[str, Tally] = {}
                sim.step(phase.traffic, n, window, answered)
                for task, t in window.items():
                    tallies.setdefault(task, Tally()).merge(t)
                for task, t in answered.items():
                    truth.setdefault(task, Tally()).merge(t)
                done += n
                series.append({"at_event": sim.sent, "phase": phase.name,
                               "tasks": {k: v.as_report() for k, v in window.items()},
                               "truth": {k: v.as_report() for k, v in answered.items()}})
                events = f"[{policy}] events {sim.sent}/{total}  {phase.name}"
                view.status(bar, f"{events}: the daemon catches up" if sync else events,
                            completed=sim.sent)
                if sync:
                    stack.wait_settled(timeout=1800)
                poll_decisions(sim.sent)
            report["phases"].append({"name": phase.name, "events": phase.events,
                                     "tasks": phase_rows(tallies, truth)})
        # Ratings still on their way land now, each once (in their answers' phases above).
        sim.flush()
        view.status(bar, f"[{policy}] events {sim.sent}/{total}: the daemon settles")
        stack.wait_settled(timeout=1800)
        poll_decisions(sim.sent)
        report["routing"] = http.get(f"{stack.url}/v1/routing").json()["routes"]
        adapters = http.get(f"{stack.url}/v1/adapters").json()["adapters"]
        jobs = http.get(f"{stack.url}/v1/jobs", params={"limit": 1000}).json()["jobs"]
    served = sorted({r["adapter"] for r in report["routing"].values()})
    report["adapters"] = {name: {"tasks": sorted(t for t, r in report["routing"].items()
                                                 if r["adapter"] == name),
                                 "versions": len(adapters.get(name, {}).get("versions", []))}
                          for name in served}
    report["decisions"] = decisions
    report["training_runs"] = [
        {"adapter": j["adapter"], "version": j["result_version"],
         "outcome": {"succeeded": "promoted"}.get(j["status"], j["status"]),
         "seconds": round((j["finished_at"] or 0) - (j["started_at"] or 0), 2)
         if j["finished_at"] and j["started_at"] else None}
        for j in sorted(jobs, key=lambda j: j["id"])]
    report["serving"] = serving
    report["series"] = series
    report["seconds"] = round(time.monotonic() - t_start, 1)
    report_path.parent.mkdir(parents=True, exist_ok=True)
    report_path.write_text(json.dumps(report, indent=2, ensure_ascii=False), "utf-8")
    from daemon.sim.picture import write_pictures

    write_pictures(report, report_path.with_suffix(".png"), report_path.with_suffix(".html"))
    return report


def phase_rows(rated: dict[str, Tally], truth: dict[str, Tally]) -> dict[str, Any]:
    """Per task of a phase: the figures the ratings show, and ``truth``, the judge over
    every answer served (a task nobody rated has its rated figures empty).

    >>> good, bad = Tally(), Tally()
    >>> good.add(True, None); bad.add(True, None); bad.add(False, "g")
    >>> phase_rows({"a": good}, {"a": bad, "b": good})["a"]["truth"]["crosstalk_rate"]
    0.5
    >>> phase_rows({"a": good}, {"a": bad, "b": good})["b"]["events"]
    0
    """
    return {t: {**rated.get(t, Tally()).as_report(), "truth": truth[t].as_report()}
            for t in sorted(truth)}


def _wait_routes(stack: LocalStack, http: httpx.Client, tasks: set[str], timeout: float) -> None:
    """Until every task has a route (or its adapter's bootstrap was given up). ``timeout``
    counts from the last moment a job was queued or running: the first jobs build the base
    model, which takes as long as the machine needs, and a job's own time limit
    (ADAPTD_TRAIN_TIME_LIMIT_SECONDS) ends one that hangs."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        stack.check_alive()
        routes = http.get(f"{stack.url}/v1/routing").json()["routes"]
        if tasks <= set(routes):
            return
        jobs = http.get(f"{stack.url}/v1/jobs", params={"limit": 1000}).json()["jobs"]
        if any(j["status"] in ("queued", "running") for j in jobs):
            deadline = time.monotonic() + timeout
        failed = [j for j in jobs if j["status"] == "failed"]
        if failed:
            raise RuntimeError(f"bootstrap training failed: {failed[0]['error']}; "
                               f"logs in {stack.logs}")
        decisions = http.get(f"{stack.url}/v1/decisions", params={"limit": 1000}).json()
        given_up = {d["adapter"] for d in decisions["decisions"]
                    if d["reason"].startswith("hold bootstrap")}
        owners = http.get(f"{stack.url}/v1/tasks").json()["tasks"]
        if {owners[t]["adapter"] for t in tasks - set(routes)} <= given_up:
            return  # the rest stays on the base model, as an app without a route would serve
        time.sleep(1.0)
    raise RuntimeError(f"no routes for all tasks and no job running for {timeout:.0f}s; "
                       f"logs in {stack.logs}")


def summary_table(report: dict[str, Any], suite_risk: dict[str, str]) -> Table:
    """Last phase per task: acceptance and crosstalk over every answer served (the judge's
    truth), how many answers users rated, and the serving adapter."""
    last = report["phases"][-1]
    table = Table(title=f"{report['policy']}: phase '{last['name']}'")
    numeric = ("served", "rated", "acceptance", "crosstalk")
    for col in ("task", "risk", "adapter", *numeric, "from"):
        table.add_column(col, justify="right" if col in numeric else "left")
    for task, row in last["tasks"].items():
        r = row.get("truth", row)
        route = report["routing"].get(task, {})
        fmt = lambda v: "-" if v is None else f"{100 * v:.1f}%"  # noqa: E731
        sources = sorted(r.get("crosstalk_sources", {}).items(), key=lambda kv: (-kv[1], kv[0]))
        table.add_row(task, suite_risk.get(task, "?"), f"{route.get('adapter', '-')}@"
                      f"{route.get('version', '-')}", str(r["events"]), str(row["events"]),
                      fmt(r["acceptance"]), fmt(r["crosstalk_rate"]),
                      ", ".join(f"{s} {n}" for s, n in sources) or "-")
    return table
