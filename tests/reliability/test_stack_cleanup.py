"""A killed `adaptd demo`, `adaptd simulate` or bench leaves nothing running: every process
its LocalStack started (API, workers with their pool children, beat) dies with it, whether
the parent got SIGTERM (`pkill -f`) or SIGKILL. Real processes, real Redis; Linux (/proc)."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import SUITE
from tests.helpers import SECRET

ROOT = Path(__file__).resolve().parents[2]
# Each test starts a whole local stack (one also trains): tens of seconds each.
pytestmark = pytest.mark.slow

# The parent: start a whole stack, print its processes' ids, then wait to be killed.
PARENT = """
import json, sys, time
from pathlib import Path
from daemon.settings import Settings
from daemon.stack import LocalStack
settings = Settings(redis_url=sys.argv[1], key_prefix=sys.argv[2], webhook_secret=sys.argv[3],
                    database_url="sqlite:///" + sys.argv[4] + "/unused.db")
train = json.loads(sys.argv[6])
with LocalStack(settings, Path(sys.argv[4]), suite=sys.argv[5], train=train,
                base_cache=Path(sys.argv[7]) if sys.argv[7] else None,
                say=lambda *a: None) as stack:
    if train:  # wait until the bootstrap training job is in its training loop
        log = stack.logs / "train-0.log"
        deadline = time.monotonic() + 420  # the first use builds the base model
        while " step " not in (log.read_text() if log.exists() else ""):
            assert time.monotonic() < deadline, "no training step logged"
            time.sleep(0.2)
    print(json.dumps([p.pid for p in stack.procs]), flush=True)
    time.sleep(600)
"""


def _group_members(groups: set[int]) -> list[int]:
    """Live (non-zombie) processes whose process group is one of ``groups``."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid pgrp ...: comm may hold spaces, so split after its ")".
        fields = stat[stat.rindex(")") + 2:].split()
        if fields[0] != "Z" and int(fields[2]) in groups:
            out.append(int(entry.name))
    return out


# A training job that would run for hours: the worker must not finish it first (Celery's
# warm shutdown on SIGTERM would), nobody is left to use its result.
LONG_TRAINING = {"steps": 500_000, "log_every": 1, "checkpoint_every": 100_000}


@pytest.mark.parametrize(("sig", "train"), [
    pytest.param(signal.SIGTERM, {}, id="sigterm"),
    pytest.param(signal.SIGKILL, {}, id="sigkill"),
    # The first use of the base model cache builds it (shared with tests/test_loop.py).
    pytest.param(signal.SIGKILL, LONG_TRAINING, id="sigkill-while-training",
                 marks=pytest.mark.timeout(600)),
])
def test_stack_processes_die_with_their_parent(redis_url: str, prefix: str, tmp_path: Path,
                                               sig: signal.Signals, train: dict[str, int]) -> None:
    pids: list[int] = []
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, redis_url, prefix, SECRET, str(tmp_path), SUITE,
         json.dumps(train), str(tmp_path.parent / "adaptd-base-cache") if train else ""],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        assert parent.stdout is not None
        ready, _, _ = select.select([parent.stdout], [], [], 450)
        assert ready, "the stack did not start (or train) within 450 s"
        pids = json.loads(parent.stdout.readline() or "[]")
        assert len(pids) == 4, pids  # API, ingest/policy worker, train worker, beat
        groups = set(pids)  # each was started in its own session: pgid == pid
        before = _group_members(groups)
        deadline = time.monotonic() + 60  # the workers fork their pool children after start
        while len(before) <= len(pids) and time.monotonic() < deadline:
            time.sleep(0.2)
            before = _group_members(groups)
        assert set(pids) <= set(before)
        assert len(before) > len(pids)  # the workers' pool children are counted too
        os.kill(parent.pid, sig)
        parent.wait(30)
        deadline = time.monotonic() + 60
        while _group_members(groups) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _group_members(groups) == [], "processes outlived their parent"
    finally:
        if parent.poll() is None:
            parent.kill()
        for pid in _group_members(set(pids)):
            os.kill(pid, signal.SIGKILL)


# A process whose shutdown never finishes (it ignores the parent-death signal), started the
# way the stack starts workers; with `exit_with_parent` it must still go once its parent dies.
STUCK_CHILD = """
import signal, sys, time
from daemon.procs import exit_with_parent
signal.signal(signal.SIGQUIT, signal.SIG_IGN)
if sys.argv[1] == "watch":
    exit_with_parent(int(sys.argv[2]), grace=float(sys.argv[3]), poll=0.05)
print("ready", flush=True)
time.sleep(600)
"""
STUCK_PARENT = """
import os, signal, subprocess, sys, time
from daemon.procs import die_with_parent
child = subprocess.Popen([sys.executable, "-c", sys.argv[1], sys.argv[2], str(os.getpid()),
                          sys.argv[3]], stdout=subprocess.PIPE,
                         preexec_fn=die_with_parent(signal.SIGQUIT))
assert child.stdout.readline() == b"ready\\n"
print(child.pid, flush=True)
time.sleep(600)
"""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return state[state.rindex(")") + 2] != "Z"


@pytest.mark.parametrize("watch", [True, False], ids=["with-watchdog", "without"])
def test_exit_with_parent_ends_a_stuck_orphan(watch: bool) -> None:
    grace = 5.0
    parent = subprocess.Popen(
        [sys.executable, "-c", STUCK_PARENT, STUCK_CHILD, "watch" if watch else "none",
         str(grace)], cwd=ROOT, stdout=subprocess.PIPE)
    child = 0
    try:
        assert parent.stdout is not None
        ready, _, _ = select.select([parent.stdout], [], [], 60)
        assert ready, "the child did not start"
        child = int(parent.stdout.readline())
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(10)
        killed = time.monotonic()
        # It got SIGQUIT and ignored it: still there right after its parent died ...
        assert _alive(child)
        while _alive(child) and time.monotonic() - killed < grace + 10:
            time.sleep(0.05)
        # ... and gone after the grace period only if the watchdog runs.
        assert _alive(child) is not watch
        if watch:
            assert time.monotonic() - killed >= grace - 2  # not before its grace period
    finally:
        if parent.poll() is None:
            parent.kill()
        if child and _alive(child):
            os.kill(child, signal.SIGKILL)
