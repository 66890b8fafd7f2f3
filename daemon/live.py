"""Live progress for people: what the training jobs and the simulation are doing now.

Training jobs publish their progress on Redis (``storage.progress``); :class:`JobWatcher`
reads it from another process every half second and :class:`LiveView` shows one line per
running job ("shared v1  training  step 80/300") under the commands' own bars, with a spinner
and the time elapsed, so a long step never looks like a hang. It draws on stderr and only
when the output is a terminal: what a command prints on stdout stays as it is.
"""

from __future__ import annotations

import threading
import time
from types import TracebackType
from typing import Any

import redis
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TaskID, TextColumn, TimeElapsedColumn

from storage.progress import State, read_job, read_jobs


def describe(state: State) -> str:
    """One line for one job's progress state."""
    phase = state.get("phase", "queued")
    step, total = state.get("step"), state.get("total")
    of = f"{step}/{total}" if step is not None and total else None
    loss = f"  loss {state['loss']:.3f}" if state.get("loss") is not None else ""
    if phase == "base":
        return f"building base {state.get('base', 'model')}" + (f"  step {of}" if of else "") + loss
    name = state.get("adapter") or f"job {state.get('job', '?')}"
    label = f"{name} v{state['version']}" if state.get("version") else name
    if phase == "queued":
        return f"{label}  queued, waiting for a train worker"
    if phase == "prepare":
        return f"{label}  preparing data and base model"
    if phase == "train":
        return f"{label}  training" + (f"  step {of}" if of else "") + loss
    if phase == "audit":
        rnd = f" round {state['round']}" if state.get("round") else ""
        rnd += f"/{state['rounds']}" if rnd and state.get("rounds") else ""
        doing = f"  step {of}{loss}" if of else "  answering fresh requests"
        return f"{label}  self-audit{rnd}{doing}"
    if phase == "eval":
        return f"{label}  evaluating" + (f" {of} tasks" if of else "")
    if phase == "write":
        return f"{label}  gating and writing the version"
    status = state.get("status", "done")
    took = ""
    if state.get("updated_at") and state.get("started_at"):
        took = f" in {state['updated_at'] - state['started_at']:.0f}s"
    error = f": {state['error']}" if state.get("error") else ""
    return f"{label}  {status}{took}{error}"


class LiveView:
    """A rich Progress on ``console`` (off unless ``enabled``): bars the command drives
    (``bar``, ``status``) and one line per training job (``show``).

    ``print`` writes a line above the live area while it is drawn (on its console: a rich
    console elsewhere would write through it), else on ``out``; finished jobs get a line
    there too, unless ``out`` is None."""

    def __init__(self, console: Console, *, enabled: bool, out: Console | None) -> None:
        self.progress = Progress(SpinnerColumn(), TextColumn("{task.description}", markup=False),
                                 BarColumn(bar_width=24), TimeElapsedColumn(), console=console,
                                 disable=not enabled, transient=True)
        self.enabled, self.out = enabled, out
        self._jobs: dict[int, TaskID] = {}
        self._finished: set[tuple[int, float]] = set()
        self._lock = threading.Lock()

    def __enter__(self) -> LiveView:
        self.progress.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.progress.stop()

    def print(self, *objects: Any, **kwargs: Any) -> None:
        if self.enabled:
            self.progress.console.print(*objects, **kwargs)
        elif self.out is not None:
            self.out.print(*objects, **kwargs)

    def bar(self, description: str, total: float | None = None) -> TaskID:
        return self.progress.add_task(description, total=total)

    def status(self, task: TaskID, description: str, **fields: Any) -> None:
        self.progress.update(task, description=description, **fields)

    def remove(self, task: TaskID) -> None:
        self.progress.remove_task(task)

    def show(self, state: State) -> None:
        """Draw one job's state: a live line while it runs; a printed line once it is done."""
        job = int(state.get("job", 0))
        with self._lock:
            task = self._jobs.get(job)
            if state.get("phase") == "done":
                if task is not None:
                    self.progress.remove_task(task)
                    del self._jobs[job]
                run = (job, float(state.get("started_at", 0.0)))
                if run not in self._finished:
                    self._finished.add(run)
                    if self.out is not None:
                        self.print(describe(state), markup=False, highlight=False)
                return
            step, total = state.get("step"), state.get("total")
            bar = {"total": total, "completed": step} if step is not None and total else \
                {"total": None, "completed": 0}
            if task is None:
                self._jobs[job] = self.progress.add_task(describe(state), **bar)
            else:
                self.progress.update(task, description=describe(state), **bar)

    def forget_missing(self, running: set[int]) -> None:
        """Drop the lines of jobs whose progress expired without a ``done``."""
        with self._lock:
            for job in set(self._jobs) - running:
                self.progress.remove_task(self._jobs.pop(job))

    @property
    def jobs_shown(self) -> int:
        return len(self._jobs)


class JobWatcher:
    """Polls the progress channel every ``interval`` seconds on a daemon thread and shows
    it on ``view``: every job under ``prefix`` written since the watcher started, or only
    ``job_id``. Redis errors are skipped: the next poll tries again."""

    def __init__(self, client: redis.Redis, prefix: str, view: LiveView, *,
                 job_id: int | None = None, interval: float = 0.5) -> None:
        self.client, self.prefix, self.view = client, prefix, view
        self.job_id, self.interval = job_id, interval
        self.since = time.time() - 1.0
        self.last: State | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def poll(self) -> list[State]:
        try:
            if self.job_id is not None:
                one = read_job(self.client, self.prefix, self.job_id)
                states = [one] if one else []
            else:
                states = read_jobs(self.client, self.prefix, since=self.since)
        except redis.RedisError:
            return []
        for state in states:
            self.view.show(state)
        if self.job_id is None:
            self.view.forget_missing({int(s["job"]) for s in states if "job" in s})
        if states:
            self.last = states[-1]
        return states

    def __enter__(self) -> JobWatcher:
        self._thread = threading.Thread(target=self._run, name="progress-watch", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.poll()  # what finished since the last poll is still reported

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.poll()


def follow_job(client: redis.Redis, prefix: str, view: LiveView, *, job_id: int,
               adapter: str, interval: float = 0.5) -> State:
    """Show job ``job_id``'s progress on ``view`` until it is done; its last state."""
    view.show({"job": job_id, "adapter": adapter, "phase": "queued"})
    watcher = JobWatcher(client, prefix, view, job_id=job_id, interval=interval)
    while True:
        watcher.poll()
        if watcher.last is not None and watcher.last.get("phase") == "done":
            return watcher.last
        time.sleep(interval)
