"""The backend seam: what the serving sync needs of an engine, and vLLM's runtime LoRA API.

A backend lists the LoRA names a replica serves, loads a version directory under a served
name and unloads a name. It tells two failures apart: :class:`Unreachable` (no answer, a
timeout, a proxy's 502/503/504: the replica is down and is reconciled when it answers) and a
refusal (the engine answered and will not load the version: rank above its limit, another
base, a path it cannot read), returned as a reason.

Only vLLM ships: it is the one tested against a real server (tests/serving). SGLang
(``POST /load_lora_adapter``) and LoRAX (``adapter_id`` per request) would each be one small
class here; they are left out until a test can talk to the real server (docs/serving.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import httpx

GATEWAY_ERRORS = (502, 503, 504)


class Unreachable(Exception):
    """The replica did not answer (or only a gateway did)."""


@dataclass(frozen=True)
class LoadResult:
    """``refused`` is None when the replica holds the name now."""

    refused: str | None = None


class Backend(Protocol):
    name: str  # the replica label (its URL)

    def lora_names(self) -> set[str]: ...
    def load(self, served_as: str, path: str) -> LoadResult: ...
    def unload(self, served_as: str) -> None: ...


def _message(resp: httpx.Response) -> str:
    try:
        body: Any = resp.json()
    except ValueError:
        return f"HTTP {resp.status_code}: {resp.text[:300]}"
    err = body.get("error") if isinstance(body, dict) else None
    msg = err.get("message") if isinstance(err, dict) else (err or body)
    return f"HTTP {resp.status_code}: {str(msg)[:500]}"


class VLLMBackend:
    """vLLM's OpenAI-compatible server with ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True``."""

    def __init__(self, url: str, *, timeout: float = 30.0, http: httpx.Client | None = None):
        self.name = url.rstrip("/")
        self.http = http or httpx.Client(timeout=timeout)

    def _call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            resp = self.http.request(method, f"{self.name}{path}", **kwargs)
        except httpx.HTTPError as exc:
            raise Unreachable(f"{type(exc).__name__}: {exc}") from None
        if resp.status_code in GATEWAY_ERRORS:
            raise Unreachable(_message(resp))
        return resp

    def lora_names(self) -> set[str]:
        """Names of the LoRA adapters served (``/v1/models`` entries with a parent)."""
        resp = self._call("GET", "/v1/models")
        if resp.status_code != 200:
            raise Unreachable(f"/v1/models answered {_message(resp)}")
        try:
            data = resp.json()["data"]
            return {str(m["id"]) for m in data if m.get("parent")}
        except (ValueError, KeyError, TypeError) as exc:
            raise Unreachable(f"/v1/models: unexpected body ({exc})") from None

    def load(self, served_as: str, path: str) -> LoadResult:
        resp = self._call("POST", "/v1/load_lora_adapter",
                          json={"lora_name": served_as, "lora_path": path})
        if resp.status_code == 200:
            return LoadResult()
        if resp.status_code == 400 and "already been loaded" in resp.text:
            return LoadResult()  # immutable names: the same name holds the same version
        return LoadResult(refused=_message(resp))

    def unload(self, served_as: str) -> None:
        resp = self._call("POST", "/v1/unload_lora_adapter", json={"lora_name": served_as})
        if resp.status_code not in (200, 404):  # 404: already gone
            raise Unreachable(f"unload {served_as}: {_message(resp)}")


BACKENDS = {"vllm": VLLMBackend}


def make_backend(spec: dict[str, Any], *, timeout: float = 30.0,
                 http: httpx.Client | None = None) -> Backend:
    kind = spec.get("backend", "vllm")
    if kind not in BACKENDS:
        raise ValueError(f"serving backend {kind!r}: one of {', '.join(BACKENDS)}")
    return BACKENDS[kind](str(spec["url"]), timeout=timeout, http=http)
