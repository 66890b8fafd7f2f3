"""`adaptd` commands that touch models: train, eval, adapters, simulate, demo. Registered on
the app in daemon/cli.py; torch is imported inside the commands only."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from daemon.cli_common import JsonFlag, console, err, fail, settings
from daemon.live import LiveView, describe, follow_job
from storage.suite import SuiteError, load_suite


def _live(json_out: bool, out: Console | None = None) -> LiveView:
    """Live progress on stderr, drawn only for a person: not with --json, not into a pipe."""
    return LiveView(err, enabled=not json_out and console.is_terminal and err.is_terminal,
                    out=out)


def _parse_ratios(text: str | None) -> dict[str, float] | None:
    if not text:
        return None
    out: dict[str, float] = {}
    for part in text.split(","):
        task, sep, weight = part.partition("=")
        try:
            if not sep:
                raise ValueError
            out[task.strip()] = float(weight)
        except ValueError:
            fail(f"--ratios: expected task=weight,... (got {part!r})")
    if any(w < 0 for w in out.values()) or sum(out.values()) <= 0:
        fail("--ratios: weights must be >= 0 and not all 0")
    return out


def train(
    adapter: Annotated[str, typer.Option(help="adapter to train (a suite adapter or a fork)")],
    ratios: Annotated[str | None, typer.Option(help="task=weight,... (default: the adapter's)")] = None,
    queue: Annotated[bool, typer.Option("--queue", help="hand the job to the train workers")] = False,
    follow: Annotated[bool, typer.Option(
        "--follow", help="with --queue: show the job's progress until it ends")] = False,
    json_out: JsonFlag = False,
) -> None:
    """Train a new version of an adapter, evaluate it per task and promote it if the gate
    passes. Runs here, showing its progress, unless --queue."""
    from sqlmodel import Session

    from storage import crud
    from storage.db import make_engine, session_scope
    from workers.policy_inputs import stored_observed

    if follow and not queue:
        fail("--follow goes with --queue (without it the job runs here, showing its progress)")
    s = settings()
    try:
        suite = load_suite(s.suite)
    except SuiteError as exc:
        fail(str(exc))
    weights = _parse_ratios(ratios)
    engine = make_engine(s.database_url)
    with Session(engine) as session:
        row = crud.get_adapter(session, name=adapter)
        tasks = list(row.tasks) if row else suite.adapters.get(adapter)
    if not tasks:
        fail(f"unknown adapter {adapter!r}; known: {sorted(suite.adapters)} (run `adaptd init`)")
    if weights is not None and set(weights) - set(tasks):
        fail(f"--ratios names tasks not in {adapter}: {sorted(set(weights) - set(tasks))}")
    params: dict[str, Any] = {"tasks": tasks, "targeted": list(weights or tasks)}
    if weights:
        params["ratios"] = weights
    with session_scope(engine) as session:
        # Tasks forked out of this adapter keep being measured against it, as in the
        # engine's own jobs, so a merge back can be judged on this run's affinity too.
        if observed := stored_observed(session, adapter):
            params["observe"] = observed
        job = crud.create_job(session, adapter=adapter, kind="retrain", params=params)
        job_id = int(job.id or 0)
    import redis as redis_lib

    live = _live(json_out)
    if queue:
        from daemon.celery_app import make_celery

        make_celery(s).send_task("adaptd.train.run_job", args=[job_id], queue="train")
        if follow:
            with live:
                state = follow_job(redis_lib.Redis.from_url(s.redis_url), s.key_prefix, live,
                                   job_id=job_id, adapter=adapter)
            print(json.dumps(state)) if json_out else console.print(f"job {job_id}: "
                                                                     f"{describe(state)}")
            if state.get("status") == "failed":
                raise typer.Exit(1)
            return
        print(json.dumps({"job": job_id, "queued": True})) if json_out else console.print(
            f"job {job_id} queued on `train`")
        return

    from policies.config import PolicyConfig
    from workers.training.config import DataConfig, EvalConfig, GateConfig, TrainConfig
    from workers.training.job import run_training_job

    with live:
        outcome = run_training_job(
            job_id, engine=engine, redis_client=redis_lib.Redis.from_url(s.redis_url),
            key_prefix=s.key_prefix, artifacts_dir=s.artifacts_dir, suite=suite,
            worker_id=f"cli-{uuid.uuid4().hex[:8]}", lease_seconds=s.train_lease_seconds,
            train_config=TrainConfig(**s.train), eval_config=EvalConfig(**s.eval),
            data_config=DataConfig(**s.data), gate_config=GateConfig(**s.gate),
            device=s.train_device, progress=live.show, two_step=bool(s.serving_replicas),
            ratio_config=PolicyConfig.from_dict(s.policy).ratios)
    if outcome.status == "promoted" and s.serving_replicas:
        from daemon.celery_app import make_celery

        # Routed once the serving replicas list it (docs/serving.md).
        make_celery(s).send_task("adaptd.serving.sync", queue="serving")
    if json_out:
        print(json.dumps(outcome.to_dict(), default=str))
        return
    console.print(f"job {job_id}: [bold]{outcome.status}[/] {adapter}@{outcome.version} "
                  f"in {outcome.seconds:.1f}s")
    for task, why in sorted(outcome.reasons.items()):
        console.print(f"  {task}: {why}")
    if outcome.status == "failed":
        fail(outcome.error or "training failed", code=1)


def eval_(
    target: Annotated[str, typer.Argument(help="NAME@VERSION, e.g. shared@3")],
    json_out: JsonFlag = False,
) -> None:
    """Evaluate one adapter version per task (quality, crosstalk) next to the base model."""
    from storage.artifacts import ArtifactError
    from storage.db import make_engine
    from workers.training.config import EvalConfig
    from workers.training.versions import evaluate_version

    name, sep, ver = target.partition("@")
    if not sep or not ver.isdigit():
        fail(f"expected NAME@VERSION, got {target!r}")
    s = settings()
    live = _live(json_out)
    live.bar(f"evaluating {target} and the base model beside it")
    try:
        with live:
            result = evaluate_version(
                make_engine(s.database_url), artifacts_dir=s.artifacts_dir,
                suite=load_suite(s.suite), adapter=name, version=int(ver),
                eval_config=EvalConfig(**s.eval), device=s.train_device)
    except (ArtifactError, SuiteError) as exc:
        fail(str(exc))
    if json_out:
        print(json.dumps(result, default=str, ensure_ascii=False))
        return
    table = Table(title=f"{target} ({result['status'] or 'not recorded'})")
    for col in ("task", "quality", "base quality", "crosstalk", "base crosstalk", "source"):
        table.add_column(col)
    fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    for task, r in result["eval"]["tasks"].items():
        b = result["base_model"]["tasks"].get(task, {})
        table.add_row(task, fmt(r.get("quality")), fmt(b.get("quality")),
                      fmt(r.get("crosstalk_rate")), fmt(b.get("crosstalk_rate")),
                      str(r.get("crosstalk_source") or "-"))
    console.print(table)


def adapters(json_out: JsonFlag = False,
             adapter: Annotated[str | None, typer.Option(help="only this adapter")] = None) -> None:
    """Adapter versions: status, what they serve, why they were promoted or rejected."""
    from storage.db import make_engine
    from workers.training.versions import list_versions

    s = settings()
    rows = list_versions(make_engine(s.database_url), adapter)
    if json_out:
        print(json.dumps(rows, default=str))
        return
    table = Table(title="adapter versions")
    for col in ("adapter", "version", "status", "serving", "reason"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["adapter"], str(r["version"]), r["status"], ",".join(r["serving"]) or "-",
                      (r["reason"] or "")[:120])
    console.print(table)


def simulate(
    scenario: Annotated[str, typer.Option(help="scenario YAML or builtin:<name>")] = "builtin:smoke",
    policy: Annotated[str, typer.Option(help="adaptive | static | uniform | isolated")] = "adaptive",
    report: Annotated[Path, typer.Option(help="report JSON (PNG and HTML beside it)")] = Path(
        ".adaptd/simulate/report.json"),
    workdir: Annotated[Path | None, typer.Option(help="state and logs (default: beside the report)")] = None,
    sync: Annotated[bool, typer.Option(help="wait for training after each chunk")] = True,
    chunk: Annotated[int, typer.Option(min=1, max=1000, help="requests between waits")] = 50,
    json_out: JsonFlag = False,
    serving: Annotated[str, typer.Option(
        help="where the app generates: inprocess, or vllm (a replica started from "
             "ADAPTD_VLLM_VENV, built by `make vllm`, or the one at --serving-url)")] = "inprocess",
    serving_url: Annotated[str | None, typer.Option(
        help="a running vLLM replica (started with --enable-lora, runtime LoRA updating on, "
             "on this host: it reads the version directories)")] = None,
) -> None:
    """Run the whole loop on a scenario through the real API with a simulated app."""
    from daemon.sim.run import POLICIES, run_simulation, summary_table
    from storage.suite import SuiteError

    if policy not in POLICIES:
        fail(f"unknown policy {policy!r}; choose from {', '.join(POLICIES)}")
    s = settings()
    out = console if not json_out else Console(stderr=True)
    view = _live(json_out, out=out)
    try:
        result = run_simulation(s, scenario, policy=policy, report_path=report,
                                workdir=workdir or report.parent / f"state-{policy}",
                                console=out, sync=sync, chunk=chunk,
                                base_cache=report.parent / "base-cache", view=view,
                                serving=serving, serving_url=serving_url)
    except (RuntimeError, SuiteError, ValueError) as exc:
        fail(str(exc))
    if json_out:
        print(json.dumps({k: v for k, v in result.items() if k != "series"}, ensure_ascii=False))
        return
    from daemon.sim.scenario import load_scenario

    suite = load_scenario(scenario)[1]
    out.print(summary_table(result, {t: spec.risk for t, spec in suite.tasks.items()}))
    out.print(f"report: {report} (picture: {report.with_suffix('.png')}, "
              f"{report.with_suffix('.html')}) in {result['seconds']:.0f}s")


def demo(
    scenario: Annotated[str, typer.Option(help="scenario YAML or builtin:<name>")] = "builtin:holiday-zh",
    workdir: Annotated[Path, typer.Option(help="where the demo keeps its state")] = Path(
        ".adaptd/demo"),
    serving: Annotated[str, typer.Option(help="inprocess, or vllm (see `adaptd simulate`)")] = "inprocess",
    serving_url: Annotated[str | None, typer.Option(help="a running vLLM replica")] = None,
) -> None:
    """The whole product on embedded defaults: a private Redis if none answers, SQLite, API,
    workers, beat and builtin:tiny, running the holiday scenario with the adaptive policy."""
    simulate(scenario=scenario, policy="adaptive", report=workdir / "report.json",
             workdir=workdir / "state", sync=True, chunk=50, json_out=False, serving=serving,
             serving_url=serving_url)
