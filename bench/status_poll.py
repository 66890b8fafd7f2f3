"""Benchmark: what polling the daemon's status costs the poller, per request.

A synchronous simulation (``adaptd demo``, ``adaptd simulate``) waits for every chunk's
events to be drained and every training job to finish by polling ``GET /v1/status`` every
0.3 s (``daemon.stack.LocalStack.wait_settled``), in the process that also runs the app
simulator. Before stop 35 each poll was a bare ``httpx.get``, which builds a client and so an
SSL context (the CA bundle parsed again) for a plain-HTTP request: py-spy on a demo's main
process during a training job put 376 of 463 samples in ``ssl.create_default_context``, and
``top`` showed that process at 25-50 % of a core, taken from the training job beside it on a
2-core machine. Now the stack keeps one client.

This bench serves a status-like JSON body from a local HTTP server in a thread and times
``--requests`` polls each way, alternating, in CPU seconds of this process (what a training
job beside it loses) and in wall seconds, and reports medians and their ratio.

    .venv/bin/python bench/status_poll.py [--requests 200] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine, print_table, write_json

BODY = json.dumps({"ingest_lag": 0, "unobserved": 0, "jobs_active": 1,
                   "jobs_unaccounted": 0}).encode()


class _Status(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # the stdlib handler's name
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(BODY)))
        self.end_headers()
        self.wfile.write(BODY)

    def log_message(self, *args: object) -> None:
        pass


def timed(poll: Callable[[], object], n: int) -> tuple[float, float]:
    """(CPU seconds, wall seconds) of ``n`` polls in this process."""
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(n):
        poll()
    return time.process_time() - cpu, time.perf_counter() - wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default="status_poll.json", help="file name under bench/results/")
    args = parser.parse_args()
    if args.requests < 1 or args.repeats < 1:
        parser.error("--requests and --repeats must be >= 1")
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Status)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/v1/status"
    client = httpx.Client(timeout=30)
    ways: dict[str, Callable[[], object]] = {
        "httpx.get per poll": lambda: httpx.get(url, timeout=30).json(),
        "one client": lambda: client.get(url).json(),
    }
    cpu: dict[str, list[float]] = {k: [] for k in ways}
    wall: dict[str, list[float]] = {k: [] for k in ways}
    try:
        for _ in range(args.repeats):
            for name, poll in ways.items():
                c, w = timed(poll, args.requests)
                cpu[name].append(c)
                wall[name].append(w)
    finally:
        client.close()
        server.shutdown()
    base = statistics.median(cpu["httpx.get per poll"])
    rows = [[name, args.requests, round(1000 * statistics.median(cpu[name]) / args.requests, 2),
             round(1000 * statistics.median(wall[name]) / args.requests, 2),
             round(statistics.median(cpu[name]) / base, 3)] for name in ways]
    print_table(f"status polls (median of {args.repeats})",
                ["way", "polls", "CPU ms/poll", "wall ms/poll", "CPU ratio"], rows)
    path = write_json(args.out, {"requests": args.requests, "repeats": args.repeats,
                                 "cpu_seconds": cpu, "wall_seconds": wall,
                                 "cpu_ratio": round(statistics.median(cpu["one client"]) / base,
                                                    4), "machine": machine()})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
