"""Ingest benchmark: signed POST /v1/feedback against a real `adaptd serve` subprocess.

Phases (one run, one private redis-server, one SQLite file; the API only XADDs):

1. single: one event per request at a fixed offered rate (open loop, default 1,000 req/s for
   10 s, after 1 s of warm-up), latency from each request's scheduled send time;
2. batch: concurrent keep-alive clients post pre-signed batches of 100 events (closed loop);
   events/s and request latency;
3. single after the burst: phase 1 again, started the moment the last batch is answered (no
   warm-up, nothing flushed in between);
4. ceiling: the same stream payloads XADD-ed straight to Redis, 100 per pipeline (redis-py with
   hiredis, as the API); and, for the breakdown, the same batches through the accept Lua
   script without HTTP, and pre-encoded on a raw socket.

Goals (docs/benchmarks.md): batch ingest >= 25 % of the ceiling; single-event
p99 <= 10 ms at 1,000 req/s, alone and in the 10 s right after the burst.

The client builds every request before the clock starts, freezes its heap (gc.freeze) and
turns its collector off while a phase runs: otherwise a full collection over the 300,000
prepared events stalls the client for 100-400 ms in the middle of a single phase, which the
open loop charges to the server.

    python -m bench.ingest --quick
    python -m bench.ingest                      # full
    python -m bench.ingest --server uvicorn --workers 2 --pythonpath /opt/extra
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import redis

from bench import common
from storage.events import FeedbackEventV1
from storage.stream import FeedbackStream
from tests.support import load, processes

NAME = "ingest"
GOAL_SHARE = 0.25
GOAL_P99_MS = 10.0
PHASES = ("single", "batch", "after_burst")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="short run (< 60 s)")
    ap.add_argument("--requests", type=int, help="batch requests (default 3000; quick 400)")
    ap.add_argument("--batch", type=int, default=100, help="events per batch request")
    ap.add_argument("--concurrency", type=int, default=8, help="concurrent batch clients")
    ap.add_argument("--rate", type=float, default=1000.0, help="single-event offered req/s")
    ap.add_argument("--single-seconds", type=float, help="single-event duration (10; quick 5)")
    ap.add_argument("--server", choices=["adaptd", "uvicorn"], default="adaptd",
                    help="`adaptd serve` as deployed, or the same app via the uvicorn CLI")
    ap.add_argument("--workers", type=int, default=1, help="uvicorn workers (--server uvicorn)")
    ap.add_argument("--http", default="auto", help="uvicorn --http (h11|httptools|auto)")
    ap.add_argument("--loop", default="auto", help="uvicorn --loop (asyncio|uvloop|auto)")
    ap.add_argument("--pythonpath", help="prepend to the server's PYTHONPATH (e.g. a dir with "
                    "uvloop/httptools installed: uvicorn picks them up on 'auto')")
    ap.add_argument("--profile", action="store_true", help="sample the server with py-spy "
                    "(PY_SPY=path) during the batch and single phases; print where CPU goes")
    ap.add_argument("--skip", default="", help="comma-separated phases to skip: batch,ceiling,single")
    common.add_out(ap, NAME)
    return ap.parse_args(argv)


def make_batches(n: int, size: int, run: str) -> list[list[dict[str, Any]]]:
    return [[load.bench_event(b * size + j, run) for j in range(size)] for b in range(n)]


def stream_payloads(batches: list[list[dict[str, Any]]]) -> list[list[tuple[str, bytes]]]:
    """What the API puts on the stream for each event (validated, compact JSON)."""
    return [[(e["id"], FeedbackEventV1.model_validate(e).stream_json()) for e in batch]
            for batch in batches]


def ceiling(client: redis.Redis, prefix: str, payloads: list[list[tuple[str, bytes]]]) -> dict[str, Any]:
    """XADD the same payloads straight to Redis, one pipeline per batch, one connection."""
    stream = f"{prefix}events"
    start = time.perf_counter()
    for batch in payloads:
        pipe = client.pipeline(transaction=False)
        for _, payload in batch:
            pipe.xadd(stream, {"e": payload})
        pipe.execute()
    elapsed = time.perf_counter() - start
    n = sum(len(b) for b in payloads)
    return {"events": n, "seconds": round(elapsed, 3), "events_per_s": round(n / elapsed, 1)}


def _resp(*parts: bytes) -> bytes:
    return b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)


def raw_ceiling(redis_url: str, prefix: str, payloads: list[list[tuple[str, bytes]]]
                ) -> dict[str, Any]:
    """The same XADDs pre-encoded as RESP and written on a raw socket, 100 per round trip:
    what Redis itself sustains when the client costs (almost) nothing."""
    import socket
    from urllib.parse import urlparse

    u = urlparse(redis_url)
    stream = f"{prefix}events".encode()
    frames = [b"".join(_resp(b"XADD", stream, b"*", b"e", p) for _, p in batch)
              for batch in payloads]
    with socket.create_connection((u.hostname or "127.0.0.1", u.port or 6379)) as sock:
        start = time.perf_counter()
        for batch, frame in zip(payloads, frames, strict=True):
            sock.sendall(frame)
            need, buf = 2 * len(batch), b""  # each reply: $<n>\r\n<id>\r\n
            while buf.count(b"\r\n") < need:
                buf += sock.recv(65536)
        elapsed = time.perf_counter() - start
    n = sum(len(b) for b in payloads)
    return {"events": n, "seconds": round(elapsed, 3), "events_per_s": round(n / elapsed, 1)}


def lua_direct(client: redis.Redis, prefix: str, payloads: list[list[tuple[str, bytes]]]) -> dict[str, Any]:
    """The accept Lua script (dedupe keys + XADD) per batch, without HTTP or validation."""
    stream = FeedbackStream(client, prefix, dedupe_ttl=3600, replay_ttl=660)
    start = time.perf_counter()
    for i, batch in enumerate(payloads):
        stream.append(batch, webhook_id=f"lua_{i}")
    elapsed = time.perf_counter() - start
    n = sum(len(b) for b in payloads)
    return {"events": n, "seconds": round(elapsed, 3), "events_per_s": round(n / elapsed, 1)}


@contextlib.contextmanager
def collector_off() -> Iterator[None]:
    """The client's own garbage collector off while a phase runs (a phase allocates a few MB)."""
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def sched_seconds(pid: int) -> tuple[float, float]:
    """(seconds on a CPU, seconds runnable but waiting for a CPU) of every thread of ``pid``
    (Linux schedstat): the wait is what other processes on the machine cost it."""
    run = wait = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            on_cpu, queued, _ = (task / "schedstat").read_text().split()
        except (OSError, ValueError):
            continue
        run, wait = run + int(on_cpu), wait + int(queued)
    return run / 1e9, wait / 1e9


@contextlib.contextmanager
def scheduled(pids: dict[str, int], into: dict[str, Any]) -> Iterator[None]:
    """Record CPU and run-queue wait of ``pids`` over the block, in seconds."""
    before = {name: sched_seconds(pid) for name, pid in pids.items()}
    yield
    for name, pid in pids.items():
        after = sched_seconds(pid)
        into[name] = (after[0] - before[name][0], after[1] - before[name][1])


def summarize(res: load.LoadResult, events_per_request: int,
              sched: dict[str, tuple[float, float]]) -> dict[str, Any]:
    """Throughput and latency of a phase, and per request the CPU time the API server and
    redis-server used and the time they were runnable but waited for a CPU."""
    ok = res.statuses.get(202, 0)
    per_request = {f"{name}_{kind}_ms_per_request": round(1000 * value / res.sent, 3)
                   for name, (cpu, wait) in sched.items()
                   for kind, value in (("cpu", cpu), ("cpu_wait", wait))}
    return per_request | {
        "requests": res.sent, "seconds": round(res.elapsed, 3), "statuses": res.statuses,
        "transport_errors": res.errors, "requests_per_s": round(res.sent / res.elapsed, 1),
        "events_per_s": round(ok * events_per_request / res.elapsed, 1),
        "latency_ms": load.latency_ms(res.latencies), "late_starts": res.late_starts,
    }


def run_single(port: int, reqs: list[bytes], rate: float, spy: Any, pids: dict[str, int]
               ) -> dict[str, Any]:
    sched: dict[str, Any] = {}
    with spy, collector_off(), scheduled(pids, sched):
        res = asyncio.run(load.open_loop("127.0.0.1", port, reqs, rate))
    report = summarize(res, 1, sched)
    report["offered_rate"] = rate
    return report


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    n_requests = args.requests or (400 if args.quick else 3000)
    single_seconds = args.single_seconds or (5.0 if args.quick else 10.0)
    skip = set(filter(None, args.skip.split(",")))
    work = common.workdir("bench-ingest")
    db_url = f"sqlite:///{work / 'adaptd.db'}"
    report: dict[str, Any] = {
        "bench": "ingest", "command": common.command(NAME),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": common.machine(),
        "config": {"requests": n_requests, "batch": args.batch, "concurrency": args.concurrency,
                   "rate": args.rate, "single_seconds": single_seconds, "server": args.server,
                   "workers": args.workers, "http": args.http, "loop": args.loop,
                   "pythonpath": args.pythonpath, "quick": args.quick},
        "goals": {"ingest_share_of_ceiling": GOAL_SHARE, "single_p99_ms": GOAL_P99_MS},
    }
    try:
        with processes.private_redis(work / "redis") as (rproc, redis_url):
            processes.prepare_database(db_url)
            extra = {}
            if args.pythonpath:
                extra["PYTHONPATH"] = os.pathsep.join([args.pythonpath, str(common.ROOT)])
            env = processes.adaptd_env(redis_url=redis_url, database_url=db_url, workdir=work,
                                    extra=extra)
            client = redis.Redis.from_url(redis_url)
            n_single = int(args.rate * single_seconds)
            print(f"generating {n_requests} x {args.batch} events and "
                  f"2 x {n_single} single events ...", flush=True)
            batches = make_batches(n_requests, args.batch, "b")
            warm_batches = make_batches(max(20, n_requests // 20), args.batch, "w")
            with processes.api_server(env, work / "api.log", server=args.server,
                                   workers=args.workers, http=args.http, loop=args.loop,
                                   ) as (proc, port):
                def spy(phase: str) -> Any:
                    if not args.profile:
                        return contextlib.nullcontext()
                    return common.profiled(proc.pid, work / f"pyspy-{phase}.txt")

                host = f"127.0.0.1:{port}"
                pids = {"server": proc.pid, "redis": rproc.pid}
                warm_single = load.feedback_requests(
                    [[load.bench_event(i, "ws")] for i in range(int(args.rate))], host)
                singles = {run: load.feedback_requests(
                    [[load.bench_event(i, run)] for i in range(n_single)], host)
                    for run in ("s", "a")}
                batch_reqs = load.feedback_requests(batches, host)
                warm_reqs = load.feedback_requests(warm_batches, host)
                gc.collect()
                gc.freeze()
                report["rss_mb_start"] = round(processes.rss_bytes(proc.pid) / 2**20, 1)
                if "single" not in skip:
                    asyncio.run(load.open_loop("127.0.0.1", port, warm_single, args.rate))
                    print(f"single: {n_single} requests at {args.rate:.0f}/s (open loop) ...",
                          flush=True)
                    report["single"] = run_single(port, singles["s"], args.rate, spy("single"),
                                                  pids)
                if "batch" not in skip:
                    asyncio.run(load.closed_loop("127.0.0.1", port, warm_reqs, args.concurrency))
                    print(f"batch: {len(batch_reqs)} requests x {args.batch} events, "
                          f"{args.concurrency} clients ...", flush=True)
                    sched: dict[str, Any] = {}
                    with spy("batch"), collector_off(), scheduled(pids, sched):
                        res = asyncio.run(load.closed_loop("127.0.0.1", port, batch_reqs,
                                                           args.concurrency))
                    report["batch"] = summarize(res, args.batch, sched)
                    report["batch"]["stream_len"] = int(client.xlen("adaptd:events"))
                    if "single" not in skip:
                        print("single right after the burst ...", flush=True)
                        report["single_after_burst"] = run_single(
                            port, singles["a"], args.rate, spy("after_burst"), pids)
                report["rss_mb_end"] = round(processes.rss_bytes(proc.pid) / 2**20, 1)
            if "ceiling" not in skip:
                payloads = stream_payloads(batches)
                client.flushdb()
                print("ceiling: pipelined XADD of the same payloads ...", flush=True)
                report["ceiling"] = ceiling(client, "adaptd:", payloads)
                client.flushdb()
                report["raw_ceiling"] = raw_ceiling(redis_url, "adaptd:", payloads)
                client.flushdb()
                report["lua_direct"] = lua_direct(client, "adaptd:", payloads)
                client.flushdb()
        if args.profile:
            report["profile_self_pct_by_package"] = {
                phase: common.self_time_by_package(work / f"pyspy-{phase}.txt")
                for phase in PHASES if (work / f"pyspy-{phase}.txt").exists()}
            for phase in PHASES:
                src = work / f"pyspy-{phase}.txt"
                if src.exists():
                    args.out.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy(src, args.out.with_name(f"{args.out.stem}-pyspy-{phase}.txt"))
    finally:
        shutil.rmtree(work, ignore_errors=True)

    verdicts = render(report)
    report["verdicts"] = verdicts
    report["machine"]["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    path = common.write_json(args.out, report)
    print(f"wrote {path}")
    return 0


def render(report: dict[str, Any]) -> dict[str, Any]:
    rows = []
    verdicts: dict[str, Any] = {}
    ceiling_rate = report.get("ceiling", {}).get("events_per_s")
    if "batch" in report:
        b = report["batch"]
        share = b["events_per_s"] / ceiling_rate if ceiling_rate else float("nan")
        verdicts["ingest_share_of_ceiling"] = round(share, 3)
        verdicts["ingest_goal_met"] = bool(share >= GOAL_SHARE)
        rows.append(["HTTP batch (100 ev/req)", b["events_per_s"], b["requests_per_s"],
                     b["latency_ms"]["p50"], b["latency_ms"]["p99"],
                     f"{100 * share:.1f} % of ceiling (goal >= 25 %)",
                     "; ".join(f"{k}: {v}" for k, v in sorted(b["statuses"].items()))])
    if "lua_direct" in report:
        lua = report["lua_direct"]
        rows.append(["accept Lua script, no HTTP", lua["events_per_s"], float("nan"),
                     float("nan"), float("nan"),
                     f"{100 * lua['events_per_s'] / ceiling_rate:.1f} % of ceiling", ""])
    if ceiling_rate:
        rows.append(["ceiling: XADD, redis-py pipeline", ceiling_rate, float("nan"),
                     float("nan"), float("nan"), "100 %", ""])
    if "raw_ceiling" in report:
        raw = report["raw_ceiling"]["events_per_s"]
        if "batch" in report:
            verdicts["ingest_share_of_raw_ceiling"] = round(report["batch"]["events_per_s"] / raw, 3)
        rows.append(["XADD pre-encoded RESP, raw socket", raw, float("nan"), float("nan"),
                     float("nan"), f"{100 * raw / ceiling_rate:.0f} % of ceiling"
                     if ceiling_rate else "", ""])
    for key, label in (("single", "alone"), ("single_after_burst", "after the burst")):
        if key not in report:
            continue
        s = report[key]
        ok = s["latency_ms"]["p99"] <= GOAL_P99_MS and not s["transport_errors"]
        verdicts[f"{key}_p99_ms"] = s["latency_ms"]["p99"]
        verdicts[f"{key}_goal_met"] = bool(ok)
        rows.append([f"HTTP single event @ {s['offered_rate']:.0f}/s, {label}", s["events_per_s"],
                     s["requests_per_s"], s["latency_ms"]["p50"], s["latency_ms"]["p99"],
                     f"p99 {'<=' if ok else '>'} {GOAL_P99_MS:.0f} ms goal",
                     "; ".join(f"{k}: {v}" for k, v in sorted(s["statuses"].items()))])
    cfg = report["config"]
    common.print_table(
        f"adaptd ingest ({cfg['server']}, workers={cfg['workers']}, http={cfg['http']}, "
        f"loop={cfg['loop']}, pythonpath={cfg['pythonpath'] or '-'})",
        ["path", "events/s", "req/s", "p50 ms", "p99 ms", "vs goal", "statuses"], rows)
    labels = {"server": "API server", "redis": "redis-server"}
    sched_rows = [[f"{key}: {label}", report[key][f"{name}_cpu_ms_per_request"],
                   report[key][f"{name}_cpu_wait_ms_per_request"]]
                  for key in ("single", "batch", "single_after_burst") if key in report
                  for name, label in labels.items()
                  if f"{name}_cpu_ms_per_request" in report[key]]
    if sched_rows:
        common.print_table("CPU per request, and time runnable but waiting for a CPU (other "
                           "processes on the machine)", ["phase: process", "CPU ms",
                                                         "waiting ms"], sched_rows)
    for phase, rows in report.get("profile_self_pct_by_package", {}).items():
        common.print_table(f"server CPU ({phase} phase): share of GIL-holding samples by the "
                           "package of the innermost frame (py-spy)", ["package", "%"], rows)
    return verdicts


if __name__ == "__main__":
    raise SystemExit(main())
