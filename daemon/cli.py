"""``adaptd`` command line. Settings come from the environment (``ADAPTD_*``, optional .env);
each command builds one :class:`Settings` and passes it down."""

from __future__ import annotations

import json
import logging
import sys
import time
import uuid
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from daemon import cli_models
from daemon.cli_common import JsonFlag, console, err, fail, settings
from daemon.settings import Settings
from daemon.webhooks import signed_headers
from storage.suite import SuiteError, load_suite

app = typer.Typer(help="adaptd: keeps multi-task LoRA adapters healthy from live feedback.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
def _logging(level: str) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


@app.command()
def serve(host: Annotated[str | None, typer.Option(help="bind address")] = None,
          port: Annotated[int | None, typer.Option(help="port")] = None,
          workers: Annotated[int, typer.Option(min=1, help="API processes")] = 1) -> None:
    """Run the HTTP API (webhook intake, routing, tasks, decisions, metrics)."""
    import uvicorn

    from daemon.api import create_app

    s = settings()
    _logging(s.log_level)
    try:
        api = create_app(s)  # also checks the suite and settings before binding
    except SuiteError as exc:
        fail(str(exc))
    target: Any = api if workers == 1 else "daemon.api:app_from_env"
    uvicorn.run(target, host=host or s.api_host, port=port or s.api_port, workers=workers,
                factory=workers > 1, log_level=s.log_level.lower(), access_log=False)


@app.command()
def worker(
    queues: Annotated[str, typer.Option(help="comma-separated: ingest,policy,train")] = "ingest,policy",
    concurrency: Annotated[int, typer.Option(min=1, help="worker processes")] = 1,
    exit_with_parent: Annotated[int | None, typer.Option(
        hidden=True, help="exit soon after this parent process dies (set by adaptd demo "
                          "and simulate for the workers they start)")] = None,
) -> None:
    """Run a Celery worker. `train` workers run one job per child process."""
    from daemon.celery_app import QUEUES, make_celery

    wanted = [q.strip() for q in queues.split(",") if q.strip()]
    unknown = [q for q in wanted if q not in QUEUES]
    if unknown or not wanted:
        fail(f"unknown queue(s) {unknown}; choose from {', '.join(QUEUES)}")
    s = settings()
    celery = make_celery(s)
    argv = ["worker", "-Q", ",".join(wanted), "--concurrency", str(concurrency),
            "--loglevel", s.log_level, "--without-gossip", "--without-mingle",
            "-n", f"adaptd-{'-'.join(wanted)}-{uuid.uuid4().hex[:6]}@%h"]
    if "train" in wanted:
        argv += ["--max-tasks-per-child", "1"]
        # Each job runs in a fresh child forked from this process: importing the training
        # stack here, once, spares every job its own import of torch, peft and transformers.
        from workers.training.job import preload

        try:
            preload(load_suite(s.suite).base_model)
        except SuiteError as exc:
            fail(str(exc))
    if exit_with_parent is not None:
        from daemon.procs import ORPHAN_GRACE_SECONDS
        from daemon.procs import exit_with_parent as watch_parent

        watch_parent(exit_with_parent, grace=ORPHAN_GRACE_SECONDS)
    celery.worker_main(argv)


@app.command()
def beat() -> None:
    """Run Celery beat (the drain and policy schedule). Run exactly one."""
    from daemon.celery_app import make_celery

    s = settings()
    schedule = s.artifacts_dir.parent / "celerybeat-schedule"
    schedule.parent.mkdir(parents=True, exist_ok=True)
    make_celery(s).start(["beat", "--loglevel", s.log_level, "-s", str(schedule)])


@app.command()
def init(
    example_suite: Annotated[Path | None, typer.Option(
        help="also write an example suite file here")] = None,
) -> None:
    """Create or upgrade the database schema and register the suite's tasks."""
    from storage.crud import sync_suite
    from storage.db import make_engine, migrate, session_scope

    s = settings()
    try:
        suite = load_suite(s.suite)
    except SuiteError as exc:
        fail(str(exc))
    migrate(s.database_url)
    with session_scope(make_engine(s.database_url)) as session:
        sync_suite(session, suite=suite)
    s.artifacts_dir.mkdir(parents=True, exist_ok=True)
    if example_suite is not None:
        from storage.suite import resolve_suite_path

        if example_suite.exists():
            fail(f"{example_suite} exists; not overwriting it")
        example_suite.write_text(resolve_suite_path("builtin:festive-zh").read_text("utf-8"),
                                 encoding="utf-8")
        console.print(f"wrote example suite to {example_suite}")
    console.print(f"database ready at {s.database_url}; {len(suite.tasks)} tasks from {s.suite}")


def _api(url: str | None, s: Settings) -> str:
    return (url or f"http://{s.api_host}:{s.api_port}").rstrip("/")


@app.command()
def status(json_out: JsonFlag = False,
           url: Annotated[str | None, typer.Option(help="API base URL")] = None) -> None:
    """Per-task table: risk, adapter, ratio, quality, crosstalk, degraded, buffered examples."""
    s = settings()
    try:
        tasks = httpx.get(f"{_api(url, s)}/v1/tasks", timeout=10).raise_for_status().json()
    except httpx.HTTPError as exc:
        fail(f"cannot reach the API at {_api(url, s)}: {exc}")
    if json_out:
        print(json.dumps(tasks, indent=2))
        return
    console.print(task_table(tasks["tasks"]))


def task_table(tasks: dict[str, dict[str, Any]]) -> Table:
    table = Table(title="adaptd tasks")
    for col in ("task", "risk", "adapter", "ratio", "quality", "crosstalk", "degraded", "buffered"):
        table.add_column(col, justify="left" if col in ("task", "risk", "adapter") else "right")
    fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    for name, t in tasks.items():
        table.add_row(name, t["risk"], t["adapter"], fmt(t["ratio"]), fmt(t["quality"]),
                      fmt(t["crosstalk_rate"]), "yes" if t["degraded"] else "no",
                      str(t["buffered_examples"]))
    return table


@app.command()
def send(
    file: Annotated[Path, typer.Argument(help="JSONL file, one feedback event per line")],
    batch: Annotated[int, typer.Option(min=1, max=1000, help="events per request")] = 500,
    url: Annotated[str | None, typer.Option(help="API base URL")] = None,
    json_out: JsonFlag = False,
) -> None:
    """Sign and post events (what an app team uses to backfill)."""
    s = settings()
    if not file.is_file():
        fail(f"{file}: no such file")
    lines = [ln for ln in file.read_text("utf-8").splitlines() if ln.strip()]
    events = []
    for n, line in enumerate(lines, 1):
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError as exc:
            fail(f"{file}:{n}: not JSON: {exc}")
    totals = send_events(events, settings=s, url=_api(url, s), batch=batch, show=not json_out)
    if json_out:
        print(json.dumps(totals))
    else:
        console.print(f"accepted {totals['accepted']}, duplicates {totals['duplicates']}")


def send_events(events: list[dict[str, Any]], *, settings: Settings, url: str, batch: int = 500,
                show: bool = True, client: httpx.Client | None = None) -> dict[str, int]:
    """Post events in signed batches; stop with a clear error on the first refusal."""
    secret = settings.webhook_secrets()[0]
    totals = {"accepted": 0, "duplicates": 0}
    http = client or httpx.Client(timeout=30)
    with Progress(TextColumn("sending"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=err, disable=not show) as progress:
        bar = progress.add_task("send", total=len(events))
        for start in range(0, len(events), batch):
            chunk = events[start:start + batch]
            body = json.dumps({"events": chunk}, ensure_ascii=False).encode()
            headers = signed_headers(secret, f"msg_{uuid.uuid4().hex}", int(time.time()), body)
            try:
                resp = http.post(f"{url}/v1/feedback", content=body, headers=headers)
            except httpx.HTTPError as exc:
                fail(f"cannot reach the API at {url}: {exc}")
            if resp.status_code != 202:
                fail(f"events {start}..{start + len(chunk) - 1} refused: "
                     f"{resp.status_code} {resp.text[:2000]}")
            answer = resp.json()
            totals["accepted"] += answer["accepted"]
            totals["duplicates"] += answer["duplicates"]
            progress.advance(bar, len(chunk))
    return totals


@app.command()
def decisions(limit: Annotated[int, typer.Option(min=1, max=1000)] = 20, json_out: JsonFlag = False,
              url: Annotated[str | None, typer.Option(help="API base URL")] = None) -> None:
    """Policy decisions, newest first, with their reasons."""
    s = settings()
    try:
        rows = httpx.get(f"{_api(url, s)}/v1/decisions", params={"limit": limit},
                         timeout=10).raise_for_status().json()["decisions"]
    except httpx.HTTPError as exc:
        fail(f"cannot reach the API at {_api(url, s)}: {exc}")
    if json_out:
        print(json.dumps(rows, indent=2))
        return
    table = Table(title="policy decisions")
    for col in ("id", "at", "action", "task", "status", "reason"):
        table.add_column(col)
    for r in rows:
        table.add_row(str(r["id"]), time.strftime("%H:%M:%S", time.localtime(r["at"])),
                      r["action"], r["task"] or "-", r["status"], r["reason"])
    console.print(table)


@app.command()
def task(name: Annotated[str, typer.Argument(help="task name")],
         action: Annotated[str, typer.Argument(help="retrain | rebalance | fork | merge")],
         url: Annotated[str | None, typer.Option(help="API base URL")] = None) -> None:
    """Operator override (needs ADAPTD_ADMIN_TOKEN)."""
    s = settings()
    token = s.admin_token_value()
    if token is None:
        fail("set ADAPTD_ADMIN_TOKEN to use operator overrides")
    try:
        resp = httpx.post(f"{_api(url, s)}/v1/tasks/{name}/{action}",
                          headers={"Authorization": f"Bearer {token}"}, timeout=10)
    except httpx.HTTPError as exc:
        fail(f"cannot reach the API: {exc}")
    if resp.status_code != 202:
        fail(f"{resp.status_code}: {resp.json().get('detail', resp.text)}")
    console.print(resp.json())


for _command in (cli_models.train, cli_models.adapters, cli_models.simulate, cli_models.demo):
    app.command()(_command)
app.command(name="eval")(cli_models.eval_)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
