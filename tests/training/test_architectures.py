"""The builtin bases of other architectures (``builtin:tiny-<arch>``) end to end: each is
built by the builder, trains a LoRA version through the real job runner (on LoRA targets of
its own layer names: Conv1D for GPT-2), passes the gate, publishes a chat prompt contract,
and evaluates per task, also when ``base_model`` names the built directory as a local model.

Built with a smaller recipe than ``TINY_SPEC`` (the test's cost), the same code otherwise."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import Session

from storage.crud import create_job, routing_table, sync_suite
from storage.suite import BUILTIN_BASES, Suite, load_suite
from tests.training.conftest import SUITE_PATH
from tests.training.fast import LENIENT_GATE, fast_train_config
from workers.training.base_model import (
    BaseModelError,
    base_build,
    ensure_base,
    expected_build,
    load_base,
)
from workers.training.config import EvalConfig
from workers.training.encode import (
    encode_example,
    prompt_ids,
    prompt_text,
    stop_ids,
    turn_end_id,
)
from workers.training.job import evaluate_version, run_training_job
from workers.training.tiny_arch import ARCHES
from workers.training.tiny_recipe import TINY_SPEC

SMALL = {"vocab_size": 1024, "hidden_size": 64, "intermediate_size": 128,
         "pretrain_steps": 12, "pretrain_batch": 8}
ATTN_MLP = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
TARGETS = {"qwen2": ATTN_MLP, "gemma": ATTN_MLP, "mistral": ATTN_MLP,
           "phi3": {"qkv_proj", "o_proj", "gate_up_proj", "down_proj"},  # fused projections
           "gpt2": {"c_attn", "c_proj", "c_fc"}}  # transformers' Conv1D
# How the rendered prompt marks the task and hands the turn to the assistant. Gemma's
# template refuses a system turn, so the task goes into the user turn.
RENDERED = {
    "qwen2": ("<|im_start|>system\nTask: apology<|im_end|>\n<|im_start|>user\n",
              "<|im_end|>\n<|im_start|>assistant\n"),
    "gemma": ("<bos><start_of_turn>user\n[apology] ", "<end_of_turn>\n<start_of_turn>model\n"),
    "mistral": ("<s>[INST] Task: apology\n\n", " [/INST]"),
    "phi3": ("<|system|>\nTask: apology<|end|>\n<|user|>\n", "<|end|>\n<|assistant|>\n"),
    "gpt2": ("<|im_start|>system\nTask: apology<|im_end|>\n<|im_start|>user\n",
             "<|im_end|>\n<|im_start|>assistant\n"),
}
# Enough to evaluate every task of each side of the gate (the test's cost is generation).
EVAL = EvalConfig(prompts_per_task=3, samples_per_prompt=1, max_new_tokens=12,
                  general_examples=4)
FILES = {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
         "tokenizer_config.json"}


def test_builtin_names_and_their_builds(suite: Suite, tmp_path: Path) -> None:
    assert set(BUILTIN_BASES.values()) == {"llama", *ARCHES} and set(TARGETS) == set(ARCHES)
    builds = {ref: expected_build(suite.model_copy(update={"base_model": ref}), tmp_path)
              for ref in BUILTIN_BASES}
    # builtin:tiny keeps its name; every architecture is its own build of the same texts.
    assert builds["builtin:tiny"] is not None and builds["builtin:tiny"].startswith("tiny-")
    for ref, build in builds.items():
        assert build is not None and build.startswith(ref.removeprefix("builtin:") + "-")
        assert len(build.rsplit("-", 1)[1]) == 20
    assert len(set(builds.values())) == len(builds)
    assert not (tmp_path / "_base").exists()  # named without building


def test_unknown_builtin_is_refused_listing_the_choices(suite: Suite, tmp_path: Path) -> None:
    text = SUITE_PATH.read_text(encoding="utf-8").replace("base_model: builtin:tiny",
                                                          "base_model: builtin:tiny-qwen3")
    bad = tmp_path / "suite.yaml"
    bad.write_text(text, encoding="utf-8")
    choices = ", ".join(BUILTIN_BASES)
    with pytest.raises(ValueError, match=rf"base_model: .*'builtin:tiny-qwen3'.*{choices}"):
        load_suite(bad)
    copied = suite.model_copy(update={"base_model": "builtin:llama"})  # skips validation
    with pytest.raises(BaseModelError, match=rf"'builtin:llama' \(have: {choices}"):
        ensure_base(copied, tmp_path)
    assert expected_build(copied, tmp_path) is None


def _train(suite: Suite, artifacts: Path, tmp_path: Path) -> tuple[Any, Any]:
    from storage.db import make_engine, migrate

    url = f"sqlite:///{tmp_path / 'adaptd.db'}"
    migrate(url)
    engine = make_engine(url)
    with Session(engine) as session:
        sync_suite(session, suite=suite)
        job = create_job(session, adapter="shared", kind="retrain", params={})
        session.commit()
        assert job.id is not None
        job_id = job.id
    out = run_training_job(
        job_id, engine=engine, redis_client=None, key_prefix="t:", artifacts_dir=artifacts,
        suite=suite, worker_id="w1", lease_seconds=60,
        train_config=fast_train_config(steps=6, task_scaling=0.0, affinity_measurements=0,
                                       audit={"rounds": 0}),
        eval_config=EVAL, gate_config=LENIENT_GATE, device="cpu")
    return engine, out


@pytest.mark.slow
@pytest.mark.parametrize("arch", sorted(ARCHES))
def test_architecture_trains_gates_serves_and_evaluates(
        arch: str, suite: Suite, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in SMALL.items():
        monkeypatch.setitem(TINY_SPEC, key, value)
    ref = f"builtin:tiny-{arch}"
    named = suite.model_copy(update={"base_model": ref})
    artifacts = tmp_path / "artifacts"
    base = ensure_base(named, artifacts)
    # A hub model's directory: its own config class, tokenizer files with the chat template.
    assert base.parent == artifacts / "_base" and base.name == expected_build(named, artifacts)
    assert {p.name for p in base.iterdir()} >= FILES
    assert json.loads((base / "config.json").read_text())["model_type"] == arch
    bundle = load_base(named, artifacts, device="cpu")
    tok = bundle.tokenizer
    assert tok.chat_template and tok.pad_token_id is not None
    head, tail = RENDERED[arch]
    assert prompt_text(tok, "apology", "帮我道歉") == f"{head}帮我道歉{tail}"
    seq = encode_example(tok, "apology", "帮我道歉", "对不起", task_index=0)
    assert seq.ids[:seq.start] == prompt_ids(tok, "apology", "帮我道歉")
    assert seq.ids[-1] == turn_end_id(tok)  # the token that closes the template's turn
    # ... and what a serving engine stops on, beside EOS (vLLM reads generation_config.json).
    stops = json.loads((base / "generation_config.json").read_text())["eos_token_id"]
    assert (stops if isinstance(stops, list) else [stops]) == stop_ids(tok)
    assert bundle.model.generation_config.eos_token_id == stops

    engine, out = _train(named, artifacts, tmp_path)
    assert (out.status, out.version) == ("promoted", 1), out.error
    tasks = sorted(suite.tasks)
    assert sorted(out.eval["production"]["tasks"]) == tasks
    version = artifacts / "shared" / "v1"
    lora = json.loads((version / "adapter_config.json").read_text())
    assert set(lora["target_modules"]) == TARGETS[arch]
    assert lora["fan_in_fan_out"] is (arch == "gpt2")  # Conv1D stores its weight transposed
    meta = json.loads((version / "adaptd.json").read_text())
    assert (meta["base_model"], meta["base_build"]) == (ref, base.name)
    with Session(engine) as session:
        routes = routing_table(session)[1]
    for task in tasks:  # what an app sends for the task: the template around its prompt
        contract = routes[task]["prompt"]
        assert contract["style"] == "chat"
        assert contract["prefix"] + "帮我道歉" + contract["suffix"] == prompt_text(
            tok, task, "帮我道歉")

    # The same build named as a local directory: the version is evaluated, per task.
    local = suite.model_copy(update={"base_model": str(base)})
    assert base_build(ensure_base(local, tmp_path)) == base.name
    result = evaluate_version(engine, artifacts_dir=artifacts, suite=local, adapter="shared",
                              version=1, eval_config=EVAL, device="cpu")
    assert sorted(result["eval"]["tasks"]) == tasks
    assert sorted(result["base_model"]["tasks"]) == tasks
    engine.dispose()
