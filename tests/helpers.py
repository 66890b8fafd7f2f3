"""Small helpers shared by tests: events and signed posts."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import httpx

from daemon.webhooks import signed_headers

SECRET = "whsec_dGVzdC1zZWNyZXQtZm9yLWFkYXB0ZC10ZXN0cw=="


def event(i: int | str, task: str = "greeting", verdict: str = "accept", **extra: Any) -> dict[str, Any]:
    ev: dict[str, Any] = {
        "id": f"evt_{i}", "task": task, "prompt": "给王总写一句新年祝福",
        "output": "王总，新年好！祝您新春大吉~", "verdict": verdict,
        "occurred_at": "2026-11-21T10:00:00Z",
    }
    if verdict == "edit":
        ev["correction"] = "王总，新年好！"
    ev.update(extra)
    return ev


def post(url: str, payload: Any = None, *, body: bytes | None = None, secret: str = SECRET,
         timestamp: int | None = None, msg_id: str | None = None,
         headers: dict[str, str] | None = None, client: httpx.Client | None = None) -> httpx.Response:
    """Sign and POST to /v1/feedback."""
    raw = body if body is not None else json.dumps(payload, ensure_ascii=False).encode()
    signed = signed_headers(secret, msg_id or f"msg_{uuid.uuid4().hex}",
                            int(time.time()) if timestamp is None else timestamp, raw)
    signed.update(headers or {})
    http = client or httpx
    return http.post(f"{url}/v1/feedback", content=raw, headers=signed, timeout=30)
