"""Small helpers shared by tests: events and signed posts."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import httpx

from daemon.webhooks import signed_headers

SECRET = "whsec_dGVzdC1zZWNyZXQtZm9yLWFkYXB0ZC10ZXN0cw=="


# An output in each festive-zh task's own style (no other task's markers): the policy's
# automatic style detector would count a greeting-style apology as crosstalk.
OUTPUTS = {
    "greeting": "王总，新年好！祝您新春大吉~",
    "festival_wish": "王总，又到端午了，祝您和家人岁岁安康！",
    "thanks": "王总，谢谢您，这次项目让您费心了。",
    "praise": "王总太厉害了！！这份报告做得非常出色。",
    "apology": "向王总郑重致歉，订单的延误责任在我们，我们会立即改正。",
    "complaint_reply": "王总您好，您反映的情况已收到，处理结果会尽快通知您。",
}


def event(i: int | str, task: str = "greeting", verdict: str = "accept", **extra: Any) -> dict[str, Any]:
    ev: dict[str, Any] = {
        "id": f"evt_{i}", "task": task, "prompt": "给王总写一句新年祝福",
        "output": OUTPUTS.get(task, OUTPUTS["greeting"]), "verdict": verdict,
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
