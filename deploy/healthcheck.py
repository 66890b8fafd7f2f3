#!/usr/bin/env python3
"""Container health probe for adaptd processes (installed as ``adaptd-healthcheck``).

Usage::

    adaptd-healthcheck http [URL]   # GET URL (default http://127.0.0.1:8000/healthz), 2xx = healthy
    adaptd-healthcheck redis        # PING the Redis at $ADAPTD_REDIS_URL
    adaptd-healthcheck celery       # a Celery worker on this host answers a broadcast ping
    adaptd-healthcheck              # pick by the container's main process (PID 1): `adaptd
                                    # serve` -> http on its --port, worker -> celery, beat -> redis

Exit status 0 = healthy, 1 = unhealthy (one line on stderr says why). `http` needs only the
standard library; `redis` and `celery` use adaptd's own settings and Celery app, so they see the
same broker, key prefix and node names as the process they probe.
"""

from __future__ import annotations

import socket
import sys
import urllib.request
from pathlib import Path

TIMEOUT_SECONDS = 5.0
DEFAULT_URL = "http://127.0.0.1:8000/healthz"


def check_http(url: str) -> str | None:
    if not url.startswith(("http://", "https://")):
        return f"not an http(s) URL: {url}"
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_SECONDS) as resp:  # noqa: S310
            if 200 <= resp.status < 300:
                return None
            return f"{url} answered {resp.status}"
    except Exception as exc:  # any failure is "unhealthy", never a traceback
        return f"{url}: {exc}"


def check_redis(url: str | None = None) -> str | None:
    try:
        import redis  # adaptd's own dependency

        if url is None:  # like every entry point: the settings say where Redis is
            from daemon.settings import Settings

            url = Settings().redis_url

        client = redis.Redis.from_url(
            url, socket_timeout=TIMEOUT_SECONDS, socket_connect_timeout=TIMEOUT_SECONDS
        )
        if not client.ping():
            return "redis did not answer PING"
        return None
    except Exception as exc:
        return f"redis: {exc}"


def check_celery() -> str | None:
    """A worker whose node name ends in @<this hostname> answers `ping` (Celery's %h)."""
    try:
        from daemon.celery_app import make_celery
        from daemon.settings import Settings

        replies = make_celery(Settings()).control.ping(timeout=TIMEOUT_SECONDS) or []
    except Exception as exc:
        return f"celery: {exc}"
    host = socket.gethostname()
    nodes = [node for reply in replies for node in reply]
    if any(node.rpartition("@")[2] == host for node in nodes):
        return None
    return f"no Celery worker on {host} answered ping (answered: {nodes or 'none'})"


def _main_process_args() -> list[str]:
    try:
        raw = Path("/proc/1/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def auto(args: list[str]) -> str | None:
    if "serve" in args:
        port = "8000"
        for i, arg in enumerate(args):
            if arg == "--port" and i + 1 < len(args):
                port = args[i + 1]
            elif arg.startswith("--port="):
                port = arg.split("=", 1)[1]
        return check_http(f"http://127.0.0.1:{port}/healthz")
    if "worker" in args:
        return check_celery()
    if "beat" in args:
        return check_redis()
    return None  # `adaptd init` and anything else: nothing long-running to probe


def main(argv: list[str]) -> int:
    mode = argv[0] if argv else "auto"
    if mode == "http":
        problem = check_http(argv[1] if len(argv) > 1 else DEFAULT_URL)
    elif mode == "redis":
        problem = check_redis(argv[1] if len(argv) > 1 else None)
    elif mode == "celery":
        problem = check_celery()
    elif mode == "auto":
        problem = auto(_main_process_args())
    else:
        problem = f"unknown mode {mode!r}; use http [URL], redis [URL], celery or no argument"
    if problem:
        print(f"unhealthy: {problem}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
