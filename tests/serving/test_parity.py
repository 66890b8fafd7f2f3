"""Parity: vLLM, given the published prompt contract, receives exactly ``prompt_ids`` and
answers greedily what adaptd's own generator answers, on every task of a builtin suite."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine

from daemon.vllm import VLLMServer
from storage.suite import Suite
from tests.serving.support import complete, install_version, promote, routes, sync
from workers.training.encode import prompt_ids
from workers.training.generate import generate_batch

# The session's first test builds the base, trains a version and starts vLLM.
pytestmark = pytest.mark.timeout(900)

PROMPTS_PER_TASK = 3


def test_vllm_answers_like_adaptd_and_receives_prompt_ids(
        serving_db: Engine, artifacts: Path, trained: Path, vllm: VLLMServer, base_root: Path,
        serving_suite: Suite) -> None:
    from peft import PeftModel

    from workers.training.base_model import load_base

    tasks = sorted(serving_suite.tasks)
    fresh = load_base(serving_suite, base_root, device="cpu")
    tok = fresh.tokenizer
    version = install_version(serving_db, artifacts, "par", 1, trained)
    promote(serving_db, version, tasks, tok)
    assert sync(serving_db, vllm.url).routed == ["par@1"]
    table = routes(serving_db)
    model = PeftModel.from_pretrained(fresh.model, table[tasks[0]]["path"]).eval()
    rng = random.Random(7)
    compared = 0
    for task in tasks:
        prompts = [serving_suite.prompt_for(task, rng) for _ in range(PROMPTS_PER_TASK)]
        local = generate_batch(model, tok, task, prompts, do_sample=False, max_new_tokens=24,
                               batch_size=1)
        for prompt, expected in zip(prompts, local, strict=True):
            body = complete(vllm.url, table[task]["served_as"], table[task], task, prompt,
                            max_tokens=24)
            choice = body["choices"][0]
            assert choice["prompt_token_ids"] == prompt_ids(tok, task, prompt), (task, prompt)
            assert choice["text"].strip() == expected, (task, prompt)
            compared += 1
    assert compared == len(tasks) * PROMPTS_PER_TASK
