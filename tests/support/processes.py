"""Processes for tests and benches: the API as a subprocess with its environment, a private
Redis, a migrated database, a process tree's resident memory."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from daemon import procs
from tests.support.load import SECRET, SUITE

ROOT = Path(__file__).resolve().parents[2]


def rss_bytes(pid: int, children: bool = True) -> int:
    """Resident set size of ``pid`` (and, by default, its child processes)."""
    def one(p: int) -> int:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        except (FileNotFoundError, ProcessLookupError):
            pass
        return 0

    total = one(pid)
    if children:
        with contextlib.suppress(FileNotFoundError):
            for task in Path(f"/proc/{pid}/task").iterdir():
                with contextlib.suppress(FileNotFoundError):
                    for child in (task / "children").read_text().split():
                        total += rss_bytes(int(child))
    return total


@contextlib.contextmanager
def private_redis(workdir: Path, **kwargs: Any) -> Iterator[tuple[Any, str]]:
    """A private redis-server on a free port (stopped afterwards)."""
    port = procs.free_port()
    proc = procs.start_redis(port, workdir, **kwargs)
    try:
        yield proc, f"redis://127.0.0.1:{port}/0"
    finally:
        procs.stop(proc)


def adaptd_env(*, redis_url: str, database_url: str, workdir: Path, prefix: str = "adaptd:",
               extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ADAPTD_")}
    env.update({
        "ADAPTD_REDIS_URL": redis_url, "ADAPTD_DATABASE_URL": database_url,
        "ADAPTD_KEY_PREFIX": prefix, "ADAPTD_WEBHOOK_SECRET": SECRET, "ADAPTD_SUITE": SUITE,
        "ADAPTD_ARTIFACTS_DIR": str(workdir / "artifacts"), "ADAPTD_LOG_LEVEL": "WARNING",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH", "")])),
    })
    env.update(extra or {})
    return env


def prepare_database(database_url: str) -> None:
    """Migrate and register the suite's tasks (what `adaptd init` does), in this process."""
    from storage.crud import sync_suite
    from storage.db import make_engine, migrate, session_scope
    from storage.suite import load_suite

    migrate(database_url)
    engine = make_engine(database_url)
    with session_scope(engine) as session:
        sync_suite(session, suite=load_suite(SUITE))
    engine.dispose()


@contextlib.contextmanager
def api_server(env: dict[str, str], log_path: Path, *, server: str = "adaptd", workers: int = 1,
               http: str = "auto", loop: str = "auto") -> Iterator[tuple[Any, int]]:
    """The API as a subprocess; yields (Popen, port).

    ``server="adaptd"`` runs ``adaptd serve`` exactly as deployed. ``server="uvicorn"`` runs the
    same app through the uvicorn CLI so workers/http/loop can be varied without code changes."""
    port = procs.free_port()
    if server == "adaptd":
        cmd = [sys.executable, "-m", "daemon.cli", "serve", "--port", str(port)]
    else:
        cmd = [sys.executable, "-m", "uvicorn", "daemon.api:app_from_env", "--factory",
               "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers),
               "--http", http, "--loop", loop, "--no-access-log", "--log-level", "warning"]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True, cwd=str(ROOT))
    try:
        procs.wait_http(f"http://127.0.0.1:{port}/healthz", timeout=60, proc=proc)
        yield proc, port
    finally:
        procs.stop(proc)
