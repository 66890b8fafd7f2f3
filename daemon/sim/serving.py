"""Where the simulated app generates: in-process (the default) or through a vLLM replica that
the stack's serving sync keeps loaded (``adaptd simulate --serving vllm``, docs/serving.md)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx

from daemon import procs
from daemon.settings import Settings
from daemon.sim.app import EngineGenerator

SERVING_MODES = ("inprocess", "vllm")


@dataclass
class ServingPlan:
    mode: str
    url: str | None = None
    port: int | None = None  # set: start a replica on this port

    @property
    def replicas(self) -> list[dict[str, str]] | None:
        return [{"url": self.url, "backend": "vllm"}] if self.url else None

    @contextlib.contextmanager
    def running(self, settings: Settings, stack: Any, *, say: Any = print) -> Iterator[None]:
        """Start the replica (when this plan starts one) beside a started stack."""
        if self.port is None:
            yield
            return
        from daemon.vllm import VLLMServer
        from storage.suite import load_suite
        from workers.training.base_model import ensure_base
        from workers.training.tiny_recipe import TINY_SPEC

        # The base is built here if it is not yet (the train worker waits on its lock).
        suite = load_suite(stack.suite)
        base = ensure_base(suite, stack.child.artifacts_dir)
        say(f"starting vLLM from {settings.vllm_venv} on {self.url} "
            f"(log: {stack.logs / 'vllm.log'})")
        # A builtin base's whole context (a long chat suite's conversations and answers need
        # it; its KV cache is small); another base keeps the server's default.
        builtin = suite.base_model.startswith("builtin:")
        with VLLMServer(settings.vllm_venv, base, port=self.port,
                        log_path=stack.logs / "vllm.log",
                        max_model_len=int(TINY_SPEC["max_position_embeddings"]) if builtin
                        else VLLMServer.MAX_MODEL_LEN):
            yield

    def generator(self, http: httpx.Client) -> EngineGenerator | None:
        return EngineGenerator(self.url, http=http) if self.url else None

    def wait_served(self, stack: Any, http: httpx.Client, *, timeout: float) -> None:
        """Until the replica lists every routed version (a replica that was not up yet when
        the first versions were routed is loaded by the next sync)."""
        if not self.url:
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            stack.check_alive()
            routed = {r["served_as"] for r in http.get(f"{stack.url}/v1/routing").json()
                      ["routes"].values()}
            with contextlib.suppress(httpx.HTTPError, KeyError, ValueError):
                data = http.get(f"{self.url}/v1/models").json()["data"]
                if routed <= {m["id"] for m in data}:
                    return
            time.sleep(1.0)
        raise RuntimeError(f"the serving engine at {self.url} did not load the routed versions "
                           f"within {timeout:.0f}s; logs in {stack.logs}")


def serving_plan(mode: str, url: str | None = None) -> ServingPlan:
    """``inprocess``, or ``vllm`` at ``url`` (none: start one on a free port).

    >>> serving_plan("vllm", "http://gpu-1:8000/").replicas
    [{'url': 'http://gpu-1:8000', 'backend': 'vllm'}]
    >>> serving_plan("inprocess", "http://x:1")
    Traceback (most recent call last):
    ...
    ValueError: --serving-url needs --serving vllm
    """
    if mode not in SERVING_MODES:
        raise ValueError(f"serving {mode!r}: one of {', '.join(SERVING_MODES)}")
    if mode == "inprocess":
        if url:
            raise ValueError("--serving-url needs --serving vllm")
        return ServingPlan(mode)
    if url:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"--serving-url {url!r}: must be http(s)://host:port")
        return ServingPlan(mode, url.rstrip("/"))
    port = procs.free_port()
    return ServingPlan(mode, f"http://127.0.0.1:{port}", port)
