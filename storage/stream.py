"""The Redis side of ingest: the feedback stream, its dead-letter stream and key names.

Every Redis key adaptd uses is built here from the configured prefix and validated names, so
no user-supplied string can reach another key.

Accepting a batch is one Lua script, so it is atomic in Redis: the webhook id is marked seen
(replay protection), each event id is marked seen (duplicate detection across batches) and
each new event is XADD-ed — all of it or none of it. The API answers 202 only after the script
returned.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis
import redis.asyncio

ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,128}\Z")
GROUP = "ingest"
EVENT_FIELD = "e"

# KEYS[1] stream, KEYS[2] replay key ("" = none), KEYS[3..] one seen-key per event.
# ARGV[1] dedupe ttl, ARGV[2] replay ttl, ARGV[3..] one JSON payload per event.
# Returns -1 for a replayed webhook id, else the number of events appended.
_ACCEPT_LUA = """
if KEYS[2] ~= '' then
  if not redis.call('SET', KEYS[2], '1', 'NX', 'EX', tonumber(ARGV[2])) then
    return -1
  end
end
local appended = 0
for i = 3, #KEYS do
  if redis.call('SET', KEYS[i], '1', 'NX', 'EX', tonumber(ARGV[1])) then
    redis.call('XADD', KEYS[1], '*', 'e', ARGV[i])
    appended = appended + 1
  end
end
return appended
"""


class InvalidKeyName(ValueError):
    """A name that would become part of a Redis key is not acceptable."""


@dataclass(frozen=True)
class Keys:
    """Every Redis key and channel under one prefix."""

    prefix: str

    @property
    def stream(self) -> str:
        return f"{self.prefix}events"

    @property
    def dead_letter(self) -> str:
        return f"{self.prefix}events:dead"

    @property
    def metrics(self) -> str:
        return f"{self.prefix}metrics"

    @property
    def routing_channel(self) -> str:
        return f"{self.prefix}routing"

    def seen(self, event_id: str) -> str:
        return f"{self.prefix}seen:{_checked(event_id)}"

    def webhook(self, webhook_id: str) -> str:
        return f"{self.prefix}webhook:{_checked(webhook_id)}"


def _checked(name: str) -> str:
    if not ID_RE.match(name):
        raise InvalidKeyName(f"{name[:40]!r} is not a valid id ([A-Za-z0-9._:-], 1..128 chars)")
    return name


@dataclass(frozen=True)
class AppendResult:
    accepted: int
    duplicates: int
    replay: bool


class FeedbackStream:
    """Append validated events; the drain reads them back with a consumer group."""

    def __init__(self, client: redis.Redis, prefix: str, *, dedupe_ttl: int, replay_ttl: int,
                 aclient: redis.asyncio.Redis | None = None):
        self.client = client
        self.keys = Keys(prefix)
        self.dedupe_ttl = dedupe_ttl
        self.replay_ttl = replay_ttl
        self._accept = client.register_script(_ACCEPT_LUA)
        self.aclient = aclient
        self._accept_async = aclient.register_script(_ACCEPT_LUA) if aclient else None

    def append(
        self, events: Sequence[tuple[str, str | bytes]], *, webhook_id: str | None = None
    ) -> AppendResult:
        """Append ``(event_id, json_payload)`` pairs atomically.

        Raises ``redis.RedisError`` when Redis is unavailable (then nothing was stored).
        """
        keys, args = _accept_call(self, events, webhook_id)
        return _result(int(self._accept(keys=keys, args=args)), len(events))

    async def append_async(
        self, events: Sequence[tuple[str, str | bytes]], *, webhook_id: str | None = None
    ) -> AppendResult:
        """``append`` through the asyncio client (the API's event loop awaits Redis instead of
        handing each request to a thread)."""
        if self._accept_async is None:
            raise RuntimeError("this FeedbackStream has no asyncio client")
        keys, args = _accept_call(self, events, webhook_id)
        return _result(int(await self._accept_async(keys=keys, args=args)), len(events))

    def ensure_group(self) -> None:
        """Create the consumer group (and the stream) if they do not exist yet."""
        try:
            self.client.xgroup_create(self.keys.stream, GROUP, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def lag(self) -> int:
        """Entries not yet acknowledged: delivered-but-pending plus never delivered."""
        try:
            groups = self.client.xinfo_groups(self.keys.stream)
        except redis.ResponseError:
            return 0
        for group in groups:
            name = group.get("name")
            if name in (GROUP, GROUP.encode()):
                pending = int(group.get("pending") or 0)
                lag = group.get("lag")
                return pending + int(lag or 0)
        return int(self.client.xlen(self.keys.stream))

    def dead_letter_count(self) -> int:
        return int(self.client.xlen(self.keys.dead_letter))


def _accept_call(stream: FeedbackStream, events: Sequence[tuple[str, str | bytes]],
                 webhook_id: str | None) -> tuple[list[str], list[Any]]:
    """KEYS and ARGV of the accept script for ``events``."""
    keys = [stream.keys.stream, stream.keys.webhook(webhook_id) if webhook_id else ""]
    keys += [stream.keys.seen(event_id) for event_id, _ in events]
    args: list[Any] = [stream.dedupe_ttl, stream.replay_ttl] + [p for _, p in events]
    return keys, args


def _result(appended: int, n: int) -> AppendResult:
    if appended < 0:
        return AppendResult(accepted=0, duplicates=n, replay=True)
    return AppendResult(accepted=appended, duplicates=n - appended, replay=False)


def incr_metric(client: redis.Redis, prefix: str, field: str, amount: float = 1.0) -> None:
    """Bump a counter kept in Redis (for counts made in the API, where no SQL row exists)."""
    client.hincrbyfloat(Keys(prefix).metrics, field, amount)


async def incr_metric_async(client: redis.asyncio.Redis, prefix: str, field: str,
                            amount: float = 1.0) -> None:
    await client.hincrbyfloat(Keys(prefix).metrics, field, amount)


def read_metrics(client: redis.Redis, prefix: str) -> dict[str, float]:
    raw = client.hgetall(Keys(prefix).metrics)
    return {_text(k): float(v) for k, v in raw.items()}


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
