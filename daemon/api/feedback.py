"""POST /v1/feedback: verify the Standard Webhooks signature, validate every event, append
to the stream. Every refusal is a 4xx with a clear message; a store that is down is a 503 with
nothing stored, and one that does not confirm in time a 503 after which a retry with the same
webhook-id is stored once."""

from __future__ import annotations

import contextlib
import json
import logging
import time
from typing import Annotated, Any

import redis
from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from daemon.api.deps import ApiError, AppDeps, Deps, problem
from daemon.api.models import FeedbackAccepted
from daemon.webhooks import SignatureError, verify
from storage.events import FeedbackEventV1
from storage.stream import ID_RE, incr_metric_async

log = logging.getLogger(__name__)
router = APIRouter()

# Bodies up to this size (a batch of ~200 typical events, a few ms of validation) are
# validated on the event loop; larger ones in the thread pool.
INLINE_BYTES = 64 * 1024

# The body is read and validated by hand (size cap before reading, signature over the raw
# bytes, one error entry per bad event), so its schema is documented here, not parsed by
# FastAPI.
_EVENT = FeedbackEventV1.model_json_schema()
REQUEST_BODY = {"requestBody": {"required": True, "content": {"application/json": {"schema": {
    "anyOf": [_EVENT, {"type": "object", "title": "FeedbackBatch", "required": ["events"],
                       "additionalProperties": False,
                       "properties": {"events": {"type": "array", "items": _EVENT,
                                                 "minItems": 1}}}]}}}}}


def _printable(text: str) -> str:
    """Text that encodes to UTF-8 (lone surrogates from JSON escapes become \\udXXX)."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _event_errors(index: int, raw: Any, exc: ValidationError) -> dict[str, Any]:
    # Only loc/msg/type: the input itself may be huge or hold what the user typed.
    event_id = raw.get("id") if isinstance(raw, dict) and isinstance(raw.get("id"), str) else None
    return {
        "index": index,
        "id": _printable(event_id[:128]) if event_id else None,
        "errors": [{"loc": [_printable(str(p)[:128]) for p in e["loc"]],
                    "msg": _printable(e["msg"]), "type": e["type"]}
                   for e in exc.errors()[:20]],
    }


class FeedbackBatch(BaseModel):
    """``{"events": [...]}``: the batch form of a POST."""

    model_config = ConfigDict(extra="forbid")

    events: list[FeedbackEventV1]


# The whole body, parsed and validated in one pass by pydantic-core. A batch is tried first;
# an event object fails it at once (no `events`, unknown fields).
_BODY: TypeAdapter[FeedbackBatch | FeedbackEventV1] = TypeAdapter(
    Annotated[FeedbackBatch | FeedbackEventV1, Field(union_mode="left_to_right")])


def _parse_events(body: bytes, deps: Deps) -> list[FeedbackEventV1]:
    """Body bytes -> validated events, or an ApiError naming every bad event.

    A body that passes the one-pass validation with known tasks only is accepted as is; any
    other body goes through ``_explain`` (JSON, then event by event), which makes every
    refusal and is the reference for what is valid."""
    try:
        text_body = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ApiError(400, f"body is not valid UTF-8 (byte {exc.start})",
                       reason="schema") from None
    try:
        doc = _BODY.validate_json(text_body)
    except ValidationError:
        return _explain(text_body, deps)
    events = doc.events if isinstance(doc, FeedbackBatch) else [doc]
    known = deps.suite.tasks
    if (not events or len(events) > deps.settings.max_batch_events
            or any(e.task not in known or (e.crosstalk_source is not None
                                           and e.crosstalk_source not in known)
                   for e in events)):
        return _explain(text_body, deps)
    return events


def _explain(text_body: str, deps: Deps) -> list[FeedbackEventV1]:
    """Parse and validate event by event: the events, or an ApiError naming every bad one."""
    try:
        doc = json.loads(text_body)
    except RecursionError:
        raise ApiError(400, "JSON is nested too deeply", reason="schema") from None
    except ValueError as exc:
        raise ApiError(400, f"body is not valid JSON: {exc}", reason="schema") from None
    if isinstance(doc, dict) and "events" in doc:
        if set(doc) != {"events"} or not isinstance(doc["events"], list):
            raise ApiError(422, 'a batch is {"events": [...]} and nothing else',
                           reason="schema")
        raw_events: list[Any] = doc["events"]
    elif isinstance(doc, dict):
        raw_events = [doc]
    else:
        raise ApiError(422, 'expected one event object or {"events": [...]}', reason="schema")
    if not raw_events:
        raise ApiError(422, "the batch holds no events", reason="schema")
    if len(raw_events) > deps.settings.max_batch_events:
        raise ApiError(413, f"a batch holds at most {deps.settings.max_batch_events} events",
                       reason="too_large")
    events: list[FeedbackEventV1] = []
    errors: list[dict[str, Any]] = []
    unknown = 0
    known = deps.suite.tasks
    for i, raw in enumerate(raw_events):
        try:
            event = FeedbackEventV1.model_validate(raw)
        except (ValidationError, RecursionError) as exc:
            if isinstance(exc, RecursionError):
                errors.append({"index": i, "id": None, "errors": [{"loc": [], "msg":
                               "nested too deeply", "type": "recursion"}]})
            else:
                errors.append(_event_errors(i, raw, exc))
            continue
        bad = [name for name in (event.task, event.crosstalk_source)
               if name is not None and name not in known]
        if bad:
            unknown += 1
            errors.append({"index": i, "id": event.id, "errors": [
                {"loc": ["task" if bad[0] == event.task else "crosstalk_source"],
                 "msg": f"unknown task {bad[0]!r}; configured: {sorted(known)}",
                 "type": "unknown_task"}]})
            continue
        events.append(event)
    if errors:
        counts = {"unknown_task": unknown, "schema": len(errors) - unknown}
        raise ApiError(422, f"{len(errors)} of {len(raw_events)} events are invalid; "
                       "nothing of this batch was stored", errors=errors,
                       rejections={k: n for k, n in counts.items() if n})
    return events


def _validate(body: bytes, headers: dict[str, str], deps: Deps
              ) -> tuple[str, list[tuple[str, bytes]]]:
    """Verify and validate one POST: its webhook id and the stream payloads of its events."""
    s = deps.settings
    try:
        webhook_id = verify(s.webhook_secrets(), headers, body, now=time.time(),
                            tolerance=s.webhook_tolerance_seconds)
    except SignatureError as exc:
        raise ApiError(401, str(exc), reason="signature") from None
    if not ID_RE.match(webhook_id):
        raise ApiError(401, "webhook-id must be 1..128 characters of [A-Za-z0-9._:-]",
                       reason="signature")
    return webhook_id, [(e.id, e.stream_json()) for e in _parse_events(body, deps)]


async def _accept(body: bytes, headers: dict[str, str], deps: Deps) -> FeedbackAccepted:
    """Verify, validate and append one POST.

    The work is done on the event loop and Redis is awaited: handing each request to a
    worker thread costs as much CPU as validating a single event, and on a busy 2-core
    machine the thread wake-ups land in the single-event tail (python -m bench.ingest). A
    body above INLINE_BYTES is validated in the thread pool instead, so one large batch
    does not hold the loop (and every other request) for tens of milliseconds."""
    if len(body) > INLINE_BYTES:
        webhook_id, payloads = await run_in_threadpool(_validate, body, headers, deps)
    else:
        webhook_id, payloads = _validate(body, headers, deps)
    try:
        result = await deps.stream.append_async(payloads, webhook_id=webhook_id)
    except redis.TimeoutError as exc:
        # The script may have run: the append is one atomic Lua call, so either every event
        # and the webhook id are stored or none is, and a retry is answered correctly either way.
        log.warning("feedback unconfirmed, Redis timed out: %s", exc)
        raise ApiError(503, "event store did not answer in time; the events may or may not "
                       "be stored, retry with the same webhook-id (a repeat is not stored "
                       "twice)", reason="unavailable") from None
    except redis.RedisError as exc:
        log.warning("feedback refused, Redis unavailable: %s", exc)
        raise ApiError(503, "event store unavailable; nothing was stored, retry later",
                       reason="unavailable") from None
    if result.replay:
        await run_in_threadpool(deps.reject, "replay")  # counted like every refusal
        return FeedbackAccepted(accepted=0, duplicates=result.duplicates, replay=1)
    if result.duplicates and deps.stream.aclient is not None:
        # The events are stored; if Redis fails now only the duplicate count is lost.
        with contextlib.suppress(redis.RedisError):
            await incr_metric_async(deps.stream.aclient, deps.settings.key_prefix,
                                    "adaptd_feedback_duplicates_total", result.duplicates)
    return FeedbackAccepted(accepted=result.accepted, duplicates=result.duplicates)


async def _read_capped(request: Request, limit: int) -> bytes:
    """Read the body, refusing more than ``limit`` bytes before reading them all."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise ApiError(400, "bad Content-Length header")
        if int(declared) > limit:
            raise ApiError(413, f"body larger than {limit} bytes", reason="too_large")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"body larger than {limit} bytes", reason="too_large")
        chunks.append(chunk)
    return b"".join(chunks)


@router.post(
    "/v1/feedback", status_code=202, response_model=FeedbackAccepted,
    summary="Post one feedback event or a batch",
    description='One event, or `{"events": [...]}` (at most the configured batch size and '
                "body size), signed with Standard Webhooks v1 headers.",
    responses={
        400: problem("body is not UTF-8 JSON, or a bad Content-Length"),
        401: problem("bad or missing signature, or timestamp outside the tolerance"),
        413: problem("body or batch too large"),
        422: problem("schema errors, one entry per bad event; nothing of the batch stored"),
        503: problem("event store unavailable (nothing stored) or too slow to confirm (all "
                     "or none stored); a retry with the same webhook-id is stored once"),
    }, openapi_extra=REQUEST_BODY)
async def post_feedback(request: Request, deps: AppDeps) -> FeedbackAccepted:
    body = await _read_capped(request, deps.settings.max_body_bytes)
    headers = {k.lower(): v for k, v in request.headers.items()}
    return await _accept(body, headers, deps)
