"""Starting and stopping the processes the demo and the tests run: a private Redis when none
answers, the API, workers and beat as child processes of the current Python."""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import httpx
import redis

PR_SET_PDEATHSIG = 1  # linux/prctl.h
# How long an orphaned worker waits for its own shutdown before `exit_with_parent` ends it.
ORPHAN_GRACE_SECONDS = 15.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def redis_answers(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1).ping())
    except redis.RedisError:
        return False


def start_redis(port: int, workdir: Path, *, appendonly: bool = False,
                appendfsync: str = "everysec") -> subprocess.Popen[bytes]:
    """A private redis-server on ``port`` (no RDB snapshots; AOF if asked)."""
    exe = shutil.which("redis-server")
    if exe is None:
        raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
    workdir.mkdir(parents=True, exist_ok=True)
    args = [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
            "--dir", str(workdir), "--appendonly", "yes" if appendonly else "no",
            "--appendfsync", appendfsync, "--maxmemory-policy", "noeviction"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            preexec_fn=die_with_parent())
    url = f"redis://127.0.0.1:{port}/0"
    deadline = time.monotonic() + 10
    while not redis_answers(url):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"redis-server did not start on port {port}")
        time.sleep(0.05)
    return proc


def spawn(args: Sequence[str], env: dict[str, str], log_path: Path, *,
          on_parent_death: signal.Signals = signal.SIGTERM) -> subprocess.Popen[bytes]:
    """Run ``python -m daemon.cli ...`` style commands with output to a log file.

    ``on_parent_death``: the signal the child gets when this process dies (see
    ``die_with_parent``)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = log_path.open("ab")
    return subprocess.Popen([sys.executable, "-m", "daemon.cli", *args], env=env,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                            preexec_fn=die_with_parent(on_parent_death))


def die_with_parent(sig: signal.Signals = signal.SIGTERM) -> Callable[[], None] | None:
    """A ``preexec_fn`` that has Linux send ``sig`` to the child when this process dies, even
    by SIGKILL: a killed demo or bench must not leave API, workers and Redis running (they
    would hold ports and eat the CPU of the next run). ``None`` elsewhere.

    The kernel sends the signal when the *thread* that forked exits, so spawn from the main
    thread (as every caller here does), not from a short-lived helper thread."""
    if not sys.platform.startswith("linux"):
        return None
    parent = os.getpid()
    libc = ctypes.CDLL(None, use_errno=True)

    def preexec() -> None:
        libc.prctl(PR_SET_PDEATHSIG, sig)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os.kill(os.getpid(), sig)

    return preexec


def exit_with_parent(parent_pid: int, *, grace: float,
                     poll: float = 0.5) -> threading.Thread:
    """A backstop for ``die_with_parent``: once ``parent_pid`` is no longer this process's
    parent (it died), give the parent-death signal's own shutdown ``grace`` seconds, then
    exit hard. Runs as a daemon thread of the calling process.

    Why: the stack's workers get SIGQUIT, Celery's cold shutdown, which ends by joining the
    pool; by Celery 5.7's code, a task the pool child has started but the main process has
    not yet seen start is not cancelled, so the join would wait for it to finish. In a CI
    run the ingest/policy worker outlived its SIGKILLed parent by more than a minute (not
    reproduced since). Exiting without Celery's cleanup loses nothing: tasks are
    acks-late (Redis redelivers them) and training jobs are leased; pool children get
    SIGKILL from their own parent-death signal (Celery sets it)."""
    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(poll)
        time.sleep(grace)
        sys.stderr.write(f"parent {parent_pid} died and shutdown did not finish in "
                         f"{grace:g} s; exiting\n")
        sys.stderr.flush()
        os._exit(1)

    thread = threading.Thread(target=watch, name="exit-with-parent", daemon=True)
    thread.start()
    return thread


def wait_http(url: str, timeout: float = 30.0, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process for {url} exited with {proc.returncode}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=1).status_code < 500:
                return
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer within {timeout:.0f}s")


def stop(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """SIGTERM the process group, then SIGKILL if it lingers."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM) if _own_group(proc) else proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL) if _own_group(proc) else proc.kill()
        proc.wait(5)


def _own_group(proc: subprocess.Popen[bytes]) -> bool:
    try:
        return os.getpgid(proc.pid) == proc.pid
    except ProcessLookupError:
        return False
