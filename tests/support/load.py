"""A load generator for the feedback API, shared by tests/reliability and the ingest and drain
benches: realistic events, pre-signed raw requests, a minimal keep-alive HTTP/1.1 client for
closed- and open-loop load, and percentiles.

The client is deliberately small: requests are signed and serialised to raw bytes before the
clock starts, and the client only writes bytes and parses a status line, headers and a
Content-Length body, so on a 2-core machine it steals as little CPU as possible from the server
it measures.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from daemon.webhooks import signed_headers

SECRET = "whsec_YmVuY2gtc2VjcmV0LWZvci1hZGFwdGQtYmVuY2htYXJrcw=="
SUITE = "builtin:festive-zh"
TASKS = ("greeting", "festival_wish", "thanks", "praise", "apology", "complaint_reply")


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
            reader: asyncio.StreamReader = self.reader
            writer: asyncio.StreamWriter = self.writer
            try:
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
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
        body = await reader.readexactly(length) if length else b""
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
    offsets: list[float] = field(default_factory=list)  # open loop: scheduled send - start, s
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
            result.offsets.append(scheduled - start)
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
