"""Parity: vLLM, given the published prompt contract, receives exactly ``prompt_ids`` and
answers greedily what adaptd's own generator answers (stopping where it stops), on every task
of a builtin suite, for plain prompts and for a conversation sent as the simulated app sends
it: on ``builtin:tiny`` (Llama, task tags) and on the chat bases of the other architectures
vLLM serves LoRA for (``builtin:tiny-<arch>``, the chat template around the prompt)."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy.engine import Engine

from daemon.settings import Settings
from daemon.sim.app import EngineGenerator
from daemon.vllm import VLLMServer
from storage.suite import Suite
from tests.serving.conftest import REPO, train_version
from tests.serving.support import complete, install_version, promote, routes, sync
from workers.training.encode import Conversation, prompt_ids
from workers.training.generate import generate_batch

# The session's first test builds the base, trains a version and starts vLLM.
pytestmark = pytest.mark.timeout(900)

PROMPTS_PER_TASK = 3
# The architectures whose vLLM model class supports LoRA (GPT-2's does not: vLLM refuses
# --enable-lora on it, so GPT-2 adapters are trained and served by adaptd's own generator).
VLLM_LORA_ARCHES = ("gemma", "mistral", "phi3", "qwen2")
# Each builds a base and starts its own replica (3-4 min alone on 2 cores): the default suite
# serves one chat base (ChatML, Qwen2) and `make test-archs` the others.
IN_DEFAULT_SUITE = ("qwen2",)
# builtin:tiny's shape (vLLM's CPU attention takes its head size, 32) with a shorter
# pre-training: parity needs a base that answers, not a good one.
ARCH_SPEC = {"pretrain_steps": 150, "pretrain_batch": 8}


def _assert_parity(engine: Engine, artifacts: Path, trained: Path, vllm: VLLMServer,
                   suite: Suite, bundle: Any, served: str) -> None:
    from peft import PeftModel

    from workers.training.base_model import quiet_peft

    tasks = sorted(suite.tasks)
    tok = bundle.tokenizer
    version = install_version(engine, artifacts, served, 1, trained)
    promote(engine, version, tasks, tok)
    assert sync(engine, vllm.url).routed == [f"{served}@1"]
    table = routes(engine)
    with quiet_peft():
        model = PeftModel.from_pretrained(bundle.model, table[tasks[0]]["path"]).eval()
    rng = random.Random(7)
    compared = 0
    for task in tasks:
        prompts = [suite.prompt_for(task, rng) for _ in range(PROMPTS_PER_TASK)]
        local = generate_batch(model, tok, task, prompts, do_sample=False, max_new_tokens=24,
                               batch_size=1)
        for prompt, expected in zip(prompts, local, strict=True):
            body = complete(vllm.url, table[task]["served_as"], table[task], task, prompt,
                            max_tokens=24)
            choice = body["choices"][0]
            assert choice["prompt_token_ids"] == prompt_ids(tok, task, prompt), (task, prompt)
            assert choice["text"].strip() == expected, (task, prompt)
            compared += 1
        # A conversation, sent as the simulated app sends it (a chat contract: the chat API,
        # whose template the engine applies; a tag contract: one completion prompt).
        conv = Conversation((("system", "Answer the last request."), ("user", prompts[0]),
                             ("assistant", local[0]), ("user", prompts[1])))
        [expected] = generate_batch(model, tok, task, [conv], do_sample=False,
                                    max_new_tokens=24, batch_size=1)
        gen = EngineGenerator(vllm.url, max_tokens=24, temperature=0.0)
        assert gen.generate_routed(task, [conv], table[task], seed=0) == [expected], task
        [(path, body, _)] = gen.requests([conv], table[task], seed=0)
        assert path == ("/v1/chat/completions" if table[task]["prompt"]["style"] == "chat"
                        else "/v1/completions")
        answer = httpx.post(f"{vllm.url}{path}", json={**body, "return_token_ids": True},
                            timeout=60).json()
        received = answer.get("prompt_token_ids") or answer["choices"][0]["prompt_token_ids"]
        assert received == prompt_ids(tok, task, conv), task
        compared += 1
    assert compared == len(tasks) * (PROMPTS_PER_TASK + 1)


def test_vllm_answers_like_adaptd_and_receives_prompt_ids(
        serving_db: Engine, artifacts: Path, trained: Path, vllm: VLLMServer, base_root: Path,
        serving_suite: Suite) -> None:
    from workers.training.base_model import load_base

    fresh = load_base(serving_suite, base_root, device="cpu")
    _assert_parity(serving_db, artifacts, trained, vllm, serving_suite, fresh, "par")


@pytest.mark.slow
@pytest.mark.timeout(1800)  # builds a base and starts its own replica: 5-13 min on busy cores
@pytest.mark.parametrize("arch", [
    a if a in IN_DEFAULT_SUITE else pytest.param(a, marks=pytest.mark.archs)
    for a in VLLM_LORA_ARCHES])
def test_vllm_parity_on_chat_bases_of_other_architectures(
        arch: str, serving_db: Engine, artifacts: Path, serving_suite: Suite,
        tmp_path: Path) -> None:
    """The base is built into a directory and named by its path, as a hub model is."""
    from workers.training.base_model import load_base
    from workers.training.tiny import build_tiny

    base = tmp_path / f"tiny-{arch}"
    build_tiny(serving_suite, base, arch=arch, spec=ARCH_SPEC)
    suite = serving_suite.model_copy(update={"base_model": str(base)})
    (tmp_path / "bases" / "_base").mkdir(parents=True)  # nothing builtin to share
    trained = train_version(suite, tmp_path / "bases", tmp_path / "train")
    bundle = load_base(suite, tmp_path, device="cpu")
    assert bundle.tokenizer.chat_template
    venv = Settings().vllm_venv
    with VLLMServer(venv if venv.is_absolute() else REPO / venv, base,
                    log_path=tmp_path / "vllm.log") as server:
        _assert_parity(serving_db, artifacts, trained, server, suite, bundle, arch)
