"""Helpers of the serving tests: versions in the real artifact store, the real promotion
path (a job row, its lease, ``finalize``), a real vLLM replica."""

from __future__ import annotations

import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy.engine import Engine
from sqlmodel import Session

from storage.artifacts import write_version
from storage.crud import create_job, routing_table
from storage.models import AdapterVersion
from workers.serving.backends import VLLMBackend
from workers.serving.contract import build_prompt, prompt_contracts
from workers.serving.sync import SyncResult, sync_once
from workers.training.lease import claim_job
from workers.training.promote import finalize


def install_version(engine: Engine, artifacts: Path, adapter: str, version: int,
                    source: Path) -> int:
    """Write ``source``'s PEFT files as ``adapter@version`` (atomic, sha256) and add its
    candidate row; return the row id."""
    files = ("adapter_config.json", "adapter_model.safetensors")

    def write(tmp: Path) -> None:
        for name in files:
            shutil.copy2(source / name, tmp / name)

    info = write_version(artifacts, adapter, version, write_files=write,
                         meta={"tasks": [], "note": "serving test"})
    with Session(engine) as session:
        row = AdapterVersion(adapter=adapter, version=version, path=str(info.path),
                             sha256=info.sha256, status="candidate")
        session.add(row)
        session.commit()
        assert row.id is not None
        return row.id


def promote(engine: Engine, version_id: int, tasks: Sequence[str], tokenizer: Any, *,
            two_step: bool = True) -> None:
    """The real promotion transaction of a training job (promote.finalize)."""
    with Session(engine) as session:
        row = session.get(AdapterVersion, version_id)
        assert row is not None
        job = create_job(session, adapter=row.adapter, kind="retrain", params={})
        session.commit()
        assert job.id is not None
        job_id = job.id
        assert claim_job(session, job_id, "test-worker", 60)
        _, routes = routing_table(session)
    done = finalize(engine, job_id=job_id, worker_id="test-worker", version_id=version_id,
                    promote=True, tasks=tasks,
                    baseline_routes={t: (r["adapter"], int(r["version"]))
                                     for t, r in routes.items() if t in tasks},
                    eval_result={}, reason="serving test", example_ids=[],
                    prompts=prompt_contracts(tokenizer, tasks), two_step=two_step)
    assert done is not None and done.promoted


def routes(engine: Engine) -> dict[str, dict[str, Any]]:
    with Session(engine) as session:
        return routing_table(session)[1]


def sync(engine: Engine, url: str, *, grace_s: float = 0.0) -> SyncResult:
    return sync_once(engine=engine, backends=[VLLMBackend(url)], grace_s=grace_s)


def listed(url: str) -> set[str]:
    return VLLMBackend(url).lora_names()


def complete(url: str, model: str, route: dict[str, Any] | None, task: str, prompt: str,
             max_tokens: int = 32, timeout: float = 60.0) -> dict[str, Any]:
    """A greedy completion as the app sends it: the routed name and the published contract."""
    contract = (route or {}).get("prompt")
    assert contract is not None, f"route of {task} publishes no prompt contract"
    resp = httpx.post(f"{url}/v1/completions", timeout=timeout, json={
        "model": model, "prompt": build_prompt(contract, prompt), "max_tokens": max_tokens,
        "temperature": 0, "add_special_tokens": contract["add_special_tokens"],
        "return_token_ids": True,
        **({"stop_token_ids": contract["stop_token_ids"]} if "stop_token_ids" in contract else {})})
    assert resp.status_code == 200, resp.text
    return dict(resp.json())


def wait_for(predicate: Any, timeout: float, poll: float = 0.25) -> float:
    """Seconds until ``predicate()`` is true; fails after ``timeout``."""
    t0 = time.monotonic()
    while not predicate():
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"not true within {timeout:.0f}s")
        time.sleep(poll)
    return time.monotonic() - t0
