"""Training progress on Redis: what a job is doing now, for people to watch.

A training job runs in a worker process; the demo, ``adaptd simulate`` and ``adaptd train
--queue --follow`` show its progress from another. The job writes one small hash per job,
``<prefix>progress:job:<id>``, and indexes it in the sorted set ``<prefix>progress:jobs``
(scored by the last write). Fields: ``job``, ``adapter``, ``version`` (the number the job
will write), ``phase`` (:data:`PHASES`), ``step``/``total`` within the phase, ``round``/
``rounds`` of the self-audit, ``loss``, ``base`` (the suite's base model), ``status`` and
``error`` once done, ``started_at``, ``updated_at``.

Writes are throttled (at most one per ``min_interval`` seconds, half a second: as often as
the readers poll; plus one at every change of phase or audit round), one MULTI round trip
each, beside training steps of a tenth of a second and more: a job pays nothing measurable
for them. Everything expires: a hash ``ttl`` seconds after its last write (``done_ttl`` once the
job ended), so a killed worker leaves nothing behind for long.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping
from typing import Any, cast

import redis

from storage.suite import check_name

PHASES = ("queued", "base", "prepare", "train", "audit", "eval", "write", "done")
FIELDS = frozenset({"job", "adapter", "version", "phase", "step", "total", "round", "rounds",
                    "loss", "status", "started_at", "updated_at", "error", "base"})
_INT_FIELDS = frozenset({"job", "version", "step", "total", "round", "rounds"})
_FLOAT_FIELDS = frozenset({"loss", "started_at", "updated_at"})
_PREFIX_RE = re.compile(r"^[A-Za-z0-9_.:-]{0,32}\Z")
DEFAULT_TTL = 3600
DONE_TTL = 600
MAX_TEXT = 300  # ``status`` and ``error`` are cut to this many characters

State = dict[str, Any]
Listener = Callable[[State], None]


def _prefix(prefix: str) -> str:
    if not isinstance(prefix, str) or not _PREFIX_RE.match(prefix):
        raise ValueError(f"key prefix {prefix[:40]!r} may hold only [A-Za-z0-9_.:-], "
                         "at most 32 characters")
    return prefix


def _job_id(job_id: int) -> int:
    if isinstance(job_id, bool) or not isinstance(job_id, int) or job_id < 1:
        raise ValueError(f"job id {job_id!r} must be a positive integer")
    return job_id


def job_key(prefix: str, job_id: int) -> str:
    return f"{_prefix(prefix)}progress:job:{_job_id(job_id)}"


def index_key(prefix: str) -> str:
    return f"{_prefix(prefix)}progress:jobs"


def _clean(fields: Mapping[str, Any]) -> State:
    """Validated fields with their types; refuses unknown names and phases."""
    out: State = {}
    for name, value in fields.items():
        if name not in FIELDS:
            raise ValueError(f"progress field {name!r} is not one of {sorted(FIELDS)}")
        if value is None:
            continue
        if name == "phase" and value not in PHASES:
            raise ValueError(f"progress phase {value!r} is not one of {PHASES}")
        if name == "adapter":
            value = check_name(value, "adapter")
        elif name in _INT_FIELDS:
            value = int(value)
        elif name in _FLOAT_FIELDS:
            value = float(value)
        else:
            value = str(value)[:MAX_TEXT]
        out[name] = value
    return out


class JobProgress:
    """The writer one training job holds. ``update`` merges fields into the job's state,
    hands it to ``listener`` (every call: an in-process display) and writes it to Redis when
    the phase or round changed or ``min_interval`` passed since the last write.

    ``client`` None: nothing is written (a job run without Redis); the listener still hears.
    A Redis error never reaches the job: progress is for people, the job's row is the truth.
    """

    def __init__(self, client: redis.Redis | None, prefix: str, job_id: int, *,
                 listener: Listener | None = None, min_interval: float = 0.5,
                 ttl: int = DEFAULT_TTL, done_ttl: int = DONE_TTL,
                 clock: Callable[[], float] = time.time) -> None:
        self.client, self.key, self.index = client, job_key(prefix, job_id), index_key(prefix)
        self.listener, self.min_interval, self.ttl, self.done_ttl = (
            listener, min_interval, ttl, done_ttl)
        self.clock = clock
        now = clock()
        self.state: State = {"job": job_id, "started_at": now, "updated_at": now}
        self._written: tuple[Any, Any] | None = None  # (phase, round) of the last write
        self._last = float("-inf")
        self.writes = 0

    def update(self, **fields: Any) -> None:
        """Merge ``fields`` (see :data:`FIELDS`); a new phase or round clears the step fields."""
        clean = _clean(fields)
        for name, stale in (("phase", ("step", "total", "round", "rounds", "loss")),
                            ("round", ("step", "total", "loss"))):
            if clean.get(name, self.state.get(name)) != self.state.get(name):
                for field in stale:
                    self.state.pop(field, None)
        self.state.update(clean)
        now = self.clock()
        self.state["updated_at"] = now
        if self.listener is not None:
            self.listener(dict(self.state))
        marker = (self.state.get("phase"), self.state.get("round"))
        if marker != self._written or now - self._last >= self.min_interval or \
                self.state.get("phase") == "done":
            self._write(marker, now)

    def phase(self, name: str) -> Listener:
        """A callback for a training module: its event dicts become this phase's fields
        (``step``/``steps``, ``round``/``rounds``, ``loss``, ``done``/``total``)."""
        def report(event: Mapping[str, Any]) -> None:
            fields: State = {"phase": name}
            for src, dst in (("step", "step"), ("steps", "total"), ("done", "step"),
                             ("total", "total"), ("round", "round"), ("rounds", "rounds"),
                             ("loss", "loss")):
                if event.get(src) is not None:
                    fields[dst] = event[src]
            self.update(**fields)

        return report

    def _write(self, marker: tuple[Any, Any], now: float) -> None:
        if self.client is None:
            return
        done = self.state.get("phase") == "done"
        try:
            pipe = self.client.pipeline(transaction=True)  # readers never see it half-written
            pipe.delete(self.key)
            pipe.hset(self.key, mapping={k: str(v) for k, v in self.state.items()})
            pipe.expire(self.key, self.done_ttl if done else self.ttl)
            pipe.zadd(self.index, {str(self.state["job"]): now})
            pipe.zremrangebyscore(self.index, "-inf", now - self.ttl)
            pipe.expire(self.index, self.ttl)
            pipe.execute()
        except redis.RedisError:
            return
        self._written, self._last = marker, now
        self.writes += 1


def read_job(client: redis.Redis, prefix: str, job_id: int) -> State | None:
    """One job's state, typed, or None if it has none (never written, or expired)."""
    raw = client.hgetall(job_key(prefix, job_id))
    return _parse(raw) if raw else None


def read_jobs(client: redis.Redis, prefix: str, *, since: float | None = None) -> list[State]:
    """Every job's state written since ``since`` (default: within the TTL), oldest job first."""
    low = since if since is not None else time.time() - DEFAULT_TTL
    ids = cast(list[bytes], client.zrangebyscore(index_key(prefix), low, "+inf"))
    jobs = sorted(int(i) for i in ids)
    if not jobs:
        return []
    pipe = client.pipeline(transaction=False)
    for job_id in jobs:
        pipe.hgetall(job_key(prefix, job_id))
    return [_parse(raw) for raw in pipe.execute() if raw]


def _parse(raw: Mapping[Any, Any]) -> State:
    out: State = {}
    for k, v in raw.items():
        name = k.decode() if isinstance(k, bytes) else str(k)
        text = v.decode() if isinstance(v, bytes) else str(v)
        if name not in FIELDS:
            continue
        try:
            out[name] = (int(text) if name in _INT_FIELDS else
                         float(text) if name in _FLOAT_FIELDS else text)
        except ValueError:
            continue
    return out
