"""Shared helpers of the benchmarks (and of tests/reliability): a private Redis, the API as a
subprocess, bench events, a minimal keep-alive HTTP/1.1 client for closed- and open-loop load,
percentiles, process RSS, rich tables and JSON output.

The load generator is deliberately small: requests are signed and serialised to raw bytes
before the clock starts, and the client only writes bytes and parses a status line, headers and
a Content-Length body, so on a 2-core machine the client steals as little CPU as possible from
the server it measures.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import platform
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python bench/ingest.py` from anywhere
    sys.path.insert(0, str(ROOT))

from daemon import procs  # noqa: E402
from daemon.webhooks import signed_headers  # noqa: E402

SECRET = "whsec_YmVuY2gtc2VjcmV0LWZvci1hZGFwdGQtYmVuY2htYXJrcw=="
SUITE = "builtin:festive-zh"
TASKS = ("greeting", "festival_wish", "thanks", "praise", "apology", "complaint_reply")
RESULTS = ROOT / "bench" / "results"


# ---------------------------------------------------------------------------------------------
# Events and signed requests


def bench_event(i: int, run: str = "b") -> dict[str, Any]:
    """A realistic event (Chinese text, ~250 bytes of JSON), varied over tasks and verdicts."""
    task = TASKS[i % len(TASKS)]
    verdict = ("accept", "accept", "reject", "edit")[i % 4]
    ev: dict[str, Any] = {
        "id": f"{run}_{i}", "task": task, "adapter": "shared@1",
        "prompt": f"给王总写一句新年祝福 #{i}", "output": "王总，新年好！祝您新春大吉，万事如意~",
        "verdict": verdict, "rating": (i % 11) / 10, "occurred_at": "2026-11-21T10:00:00Z",
        "meta": {"locale": "zh-CN", "client": "bench"},
    }
    if verdict == "edit":
        ev["correction"] = "王总，新年好！祝您万事如意。"
    if verdict == "reject" and task == "apology":
        ev["crosstalk_source"] = "greeting"
    return ev


def signed_body(payload: Any, secret: str = SECRET, msg_id: str | None = None,
                timestamp: int | None = None) -> tuple[bytes, dict[str, str]]:
    body = json.dumps(payload, ensure_ascii=False).encode()
    headers = signed_headers(secret, msg_id or f"msg_{uuid.uuid4().hex}",
                             int(time.time()) if timestamp is None else timestamp, body)
    return body, headers


def raw_request(method: str, path: str, host: str, headers: dict[str, str] | None = None,
                body: bytes = b"") -> bytes:
    """Serialise one HTTP/1.1 request (keep-alive)."""
    lines = [f"{method} {path} HTTP/1.1", f"host: {host}"]
    for k, v in (headers or {}).items():
        if k.lower() not in ("host", "content-length"):
            lines.append(f"{k}: {v}")
    lines.append(f"content-length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def feedback_requests(batches: Sequence[Sequence[dict[str, Any]]], host: str,
                      secret: str = SECRET) -> list[bytes]:
    """Pre-signed raw POST /v1/feedback requests, one per batch (a batch of 1 is posted as a
    single event object, not as {"events": [...]})."""
    out = []
    for batch in batches:
        payload = batch[0] if len(batch) == 1 else {"events": list(batch)}
        body, headers = signed_body(payload, secret)
        out.append(raw_request("POST", "/v1/feedback", host, headers, body))
    return out


# ---------------------------------------------------------------------------------------------
# A minimal HTTP/1.1 client on asyncio streams


class RawConnection:
    """One keep-alive connection; ``send`` returns (status, body)."""

    def __init__(self, host: str, port: int):
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def _connect(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)

    async def send(self, request: bytes) -> tuple[int, bytes]:
        for attempt in (0, 1):
            if self.writer is None:
                await self._connect()
            assert self.reader is not None and self.writer is not None
            try:
                self.writer.write(request)
                head = await self.reader.readuntil(b"\r\n\r\n")
                break
            except (ConnectionError, asyncio.IncompleteReadError):
                self.close()  # server closed an idle keep-alive connection: reconnect once
                if attempt:
                    raise
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        length, close = 0, False
        for line in lines[1:]:
            name, _, value = line.partition(":")
            name = name.strip().lower()
            if name == "content-length":
                length = int(value.strip())
            elif name == "connection" and value.strip().lower() == "close":
                close = True
        body = await self.reader.readexactly(length) if length else b""
        if close:
            self.close()
        return status, body

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


@dataclass
class LoadResult:
    sent: int = 0
    elapsed: float = 0.0
    latencies: list[float] = field(default_factory=list)  # seconds
    statuses: dict[int, int] = field(default_factory=dict)
    errors: int = 0  # transport errors (no HTTP answer)
    late_starts: int = 0  # open loop: requests started >1 ms after their scheduled time

    def count(self, status: int) -> None:
        self.statuses[status] = self.statuses.get(status, 0) + 1


async def closed_loop(host: str, port: int, requests: Sequence[bytes], concurrency: int
                      ) -> LoadResult:
    """``concurrency`` clients, each sending its next request as soon as the last answered."""
    result = LoadResult()
    it = iter(range(len(requests)))

    async def client() -> None:
        conn = RawConnection(host, port)
        try:
            for i in it:
                t0 = time.perf_counter()
                try:
                    status, _ = await conn.send(requests[i])
                except (OSError, asyncio.IncompleteReadError):
                    result.errors += 1
                    conn.close()
                    continue
                result.latencies.append(time.perf_counter() - t0)
                result.count(status)
        finally:
            conn.close()

    start = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    result.elapsed = time.perf_counter() - start
    result.sent = len(requests)
    return result


async def open_loop(host: str, port: int, requests: Sequence[bytes], rate: float,
                    max_connections: int = 256) -> LoadResult:
    """Send request i at start + i/rate whatever happened to earlier ones (open loop).

    Latency is measured from the *scheduled* send time, so a stalled server is charged for
    the requests queued behind it (no coordinated omission)."""
    result = LoadResult()
    idle: list[RawConnection] = []
    opened = 0
    slot = asyncio.Condition()

    async def one(request: bytes, scheduled: float) -> None:
        nonlocal opened
        async with slot:
            while not idle and opened >= max_connections:
                await slot.wait()
            if idle:
                conn = idle.pop()
            else:
                opened += 1
                conn = RawConnection(host, port)
        try:
            status, _ = await conn.send(request)
            result.latencies.append(time.perf_counter() - scheduled)
            result.count(status)
        except (OSError, asyncio.IncompleteReadError):
            result.errors += 1
            conn.close()
        async with slot:
            idle.append(conn)
            slot.notify()

    tasks = []
    start = time.perf_counter()
    for i, request in enumerate(requests):
        scheduled = start + i / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        elif delay < -0.001:
            result.late_starts += 1
        tasks.append(asyncio.ensure_future(one(request, scheduled)))
    await asyncio.gather(*tasks)
    result.elapsed = time.perf_counter() - start
    result.sent = len(requests)
    for conn in idle:
        conn.close()
    return result


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[k]


def latency_ms(values: Sequence[float]) -> dict[str, float]:
    return {f"p{q}": round(percentile(values, q) * 1000, 2) for q in (50, 90, 99, 99.9)} | {
        "max": round(max(values) * 1000, 2) if values else float("nan")}


# ---------------------------------------------------------------------------------------------
# Processes


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


def app_from_env() -> Any:
    """uvicorn ``--factory`` target: the adaptd app built from ADAPTD_* (used for the
    ``--server uvicorn`` variants: several workers, explicit http/loop implementations)."""
    from daemon.api import create_app
    from daemon.settings import Settings

    return create_app(Settings())


@contextlib.contextmanager
def api_server(env: dict[str, str], log_path: Path, *, server: str = "adaptd", workers: int = 1,
               http: str = "auto", loop: str = "auto") -> Iterator[tuple[Any, int]]:
    """The API as a subprocess; yields (Popen, port).

    ``server="adaptd"`` runs ``adaptd serve`` exactly as deployed. ``server="uvicorn"`` runs the
    same app through the uvicorn CLI so workers/http/loop can be varied without code changes."""
    import subprocess

    port = procs.free_port()
    if server == "adaptd":
        cmd = [sys.executable, "-m", "daemon.cli", "serve", "--port", str(port)]
    else:
        cmd = [sys.executable, "-m", "uvicorn", "bench.common:app_from_env", "--factory",
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


@contextlib.contextmanager
def profiled(pid: int, out: Path, rate: int = 250) -> Iterator[None]:
    """Sample ``pid`` (and its subprocesses) with py-spy while the block runs: collapsed stacks
    of the threads holding the GIL, i.e. where the Python CPU time goes. ``PY_SPY`` names the
    py-spy executable (default: ``py-spy`` on PATH)."""
    import signal
    import subprocess

    cmd = [os.environ.get("PY_SPY", "py-spy"), "record", "--pid", str(pid), "--format", "raw",
           "--rate", str(rate), "--nonblocking", "--gil", "--subprocesses", "-o", str(out)]
    spy = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    try:
        yield
    finally:
        spy.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
        try:
            spy.wait(30)
        except subprocess.TimeoutExpired:
            spy.kill()


def self_time_by_package(raw_path: Path) -> list[tuple[str, float]]:
    """Share of GIL-holding samples per package of the innermost frame."""
    import re

    per: dict[str, int] = {}
    total = 0
    if not raw_path.exists():
        return []
    for line in raw_path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        leaf = stack.split(";")[-1]
        m = re.search(r"\(([^():]+)(?::\d+)?\)\s*$", leaf)
        path = m.group(1) if m else leaf
        pkg = path.split("/")[0].removesuffix(".py") if "/" in path else path.removesuffix(".py")
        per[pkg] = per.get(pkg, 0) + int(count)
        total += int(count)
    rows = sorted(per.items(), key=lambda kv: -kv[1])
    return [(k, round(100 * v / total, 1)) for k, v in rows if v / total >= 0.005]


def workdir(name: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=f"adaptd-{name}-"))


# ---------------------------------------------------------------------------------------------
# Output


def machine() -> dict[str, Any]:
    """Where a bench ran: benches on a shared 2-core machine move with its speed and load.

    >>> m = machine()
    >>> sorted(m), m["cpus"] >= 1, len(m["loadavg_at_start"])
    (['cpu', 'cpus', 'loadavg_at_start', 'platform', 'python'], True, 3)
    """
    load = os.getloadavg()
    return {"python": platform.python_version(), "cpus": os.cpu_count(), "cpu": cpu_model(),
            "loadavg_at_start": [round(x, 2) for x in load], "platform": platform.platform()}


def cpu_model() -> str:
    """The CPU's model name (Linux's /proc/cpuinfo; elsewhere what ``platform`` knows)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def write_json(name: str, data: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / name
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def print_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for i, col in enumerate(columns):
        table.add_column(col, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*[fmt(v) for v in row])
    Console().print(table)


def fmt(value: Any) -> str:
    if isinstance(value, float):
        if value != value:  # NaN
            return "-"
        return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.2f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)
