"""Conversations, end to end: the app simulator posts `messages` for a chat suite over real
HTTP, the drain (real Redis, SQLite) stores them with the training example, and training
renders the app's conversation with the base model's chat template, learning only the final
answer. Plus the rendering rules of docs/contracts.md section 3 on tokenizers with and
without a chat template."""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from sqlmodel import Session, select

from daemon.sim.app import AppSimulator
from storage.models import TrainingExample
from storage.suite import Suite, SuiteError, load_suite
from tests.conftest import LiveServer, prepared_engine
from tests.helpers import SECRET
from workers.ingest import drain_once
from workers.training.data import assemble, fresh_request
from workers.training.encode import (
    Conversation,
    encode_example,
    flat_text,
    prompt_ids,
    prompt_text,
)
from workers.training.packing import IGNORE, make_batch
from workers.training.trainer import encode_pools

CHATML = ("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n"
          "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
NO_SYSTEM = ("{% for m in messages %}{% if m.role == 'system' %}"
             "{{ raise_exception('System role not supported') }}{% endif %}"
             "<{{ m.role }}>{{ m.content }}{% endfor %}"
             "{% if add_generation_prompt %}<assistant>{% endif %}")


@pytest.fixture(scope="module")
def helpdesk() -> Suite:
    return load_suite("builtin:helpdesk-en")


@pytest.fixture(scope="module")
def plain_tok(helpdesk: Suite) -> Any:
    """The builtin base's tokenizer recipe (no chat template: task tag and ``<sep>``)."""
    from workers.training.tiny import train_tokenizer

    return train_tokenizer(helpdesk, 1024)


@pytest.fixture(scope="module")
def chat_tok(plain_tok: Any) -> Any:
    import copy

    tok = copy.deepcopy(plain_tok)
    tok.chat_template = CHATML
    return tok


class SeedAnswers:
    """Answers every request with one of the task's seed responses (the model server's edge,
    not what is under test)."""

    def __init__(self, suite: Suite):
        self.suite = suite
        self.asked: list[Any] = []

    def generate(self, task: str, prompts: Sequence[Any], *, adapter: str | None = None,
                 version: int | None = None, path: Path | None = None,
                 sha256: str | None = None, **kwargs: Any) -> list[str]:
        self.asked += prompts
        seeds = self.suite.seed_examples(task)
        # A NUL, as a byte-level model can emit: the app must still post its feedback.
        return [seeds[i % len(seeds)].response + "\x00" * (i == 0) for i in range(len(prompts))]


def test_messages_flow_from_the_app_to_chat_template_tokens(
    make_settings: Any, helpdesk: Suite, chat_tok: Any
) -> None:
    settings = make_settings(suite="builtin:helpdesk-en")
    engine = prepared_engine(settings)
    from daemon.api import create_app

    gen = SeedAnswers(helpdesk)
    with LiveServer(create_app(settings, engine=engine)) as api, \
            httpx.Client(timeout=30) as http:
        app = AppSimulator(suite=helpdesk, url=api.url, secret=SECRET, generator=gen, seed=3,
                           http=http)
        events = app.step({t: 1.0 for t in helpdesk.tasks}, 24, {})
    # The app generated from the conversations and posted them as `messages`.
    assert all(isinstance(p, Conversation) for p in gen.asked)
    assert all("prompt" not in e and e["messages"][0]["role"] == "system" for e in events)
    assert any(len(e["messages"]) >= 4 for e in events)  # earlier turns, not only a system
    assert not any("\x00" in e["output"] for e in events)

    client = redis.Redis.from_url(settings.redis_url)
    drained = drain_once(client=client, engine=engine, prefix=settings.key_prefix,
                         consumer="c1")
    assert drained.read == len(events)
    accepted = next(e for e in events if e["verdict"] == "accept" and len(e["messages"]) >= 4)
    task = accepted["task"]
    with Session(engine) as session:
        row = session.exec(select(TrainingExample).where(
            TrainingExample.event_id == accepted["id"])).one()
        assert row.messages == accepted["messages"]
        assert row.prompt == accepted["messages"][-1]["content"]
        data = assemble(helpdesk, sorted(helpdesk.tasks), session=session)
    engine.dispose()

    conv = Conversation.of(accepted["messages"])
    sample = next(s for s in data.tasks[task].train + data.tasks[task].heldout
                  if s.example_id == row.id)
    assert sample.prompt == conv and sample.response == accepted["output"]

    seq = encode_example(chat_tok, task, sample.prompt, sample.response, task_index=0)
    head, body = seq.ids[: seq.start], seq.ids[seq.start :]
    # The prompt is the app's conversation through the template, the task's system text first
    # and the app's own system prompt after it.
    system, *dialogue = accepted["messages"]
    want = [{"role": "system", "content": f"Task: {task}\n\n{system['content']}"}, *dialogue]
    rendered = chat_tok.apply_chat_template(want, tokenize=False, add_generation_prompt=True)
    assert head == chat_tok.encode(rendered, add_special_tokens=False)
    assert head == prompt_ids(chat_tok, task, conv)  # what generation builds
    text = chat_tok.decode(head)
    for turn in accepted["messages"]:  # system prompt and every earlier turn are in the prompt
        assert turn["content"] in text
    earlier = next(t["content"] for t in dialogue if t["role"] == "assistant")
    assert earlier not in chat_tok.decode(body)
    # Only the final answer (and EOS) carries loss.
    assert body == [*chat_tok.encode(accepted["output"], add_special_tokens=False), chat_tok.eos_token_id]
    labels = make_batch([seq], pad_id=chat_tok.pad_token_id, pack_len=4096).labels[0].tolist()
    assert labels == [IGNORE] * len(head) + body

    # The trainer's pools tokenize the same conversation (trainer.encode_pools).
    pools = encode_pools(chat_tok, data, max_len=4096)
    assert any(s.ids == seq.ids for s in pools[task])


def test_a_plain_prompt_renders_as_before(plain_tok: Any, chat_tok: Any) -> None:
    """A plain prompt and a conversation of one user turn give the very same tokens, and the
    plain prompt's rendering is the one versions of this prompt format were trained on."""
    one = Conversation((("user", "hi"),))
    assert prompt_text(plain_tok, "launch_note", "hi") == "<task:launch_note>hi<sep>"
    assert prompt_ids(plain_tok, "launch_note", one) == prompt_ids(plain_tok, "launch_note", "hi")
    assert prompt_text(chat_tok, "launch_note", "hi") == (
        "<|im_start|>system\nTask: launch_note<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n"
        "<|im_start|>assistant\n")
    assert prompt_ids(chat_tok, "launch_note", one) == prompt_ids(chat_tok, "launch_note", "hi")


def test_without_a_template_turns_are_role_lines_after_the_tag(plain_tok: Any) -> None:
    conv = Conversation((("system", "Be exact."), ("user", "hi"), ("assistant", "Hello."),
                         ("user", "why $49?")))
    assert prompt_text(plain_tok, "billing_dispute", conv) == (
        "<task:billing_dispute>system: Be exact.\nuser: hi\nassistant: Hello.\n"
        "user: why $49?<sep>")
    ids = prompt_ids(plain_tok, "billing_dispute", conv)
    assert ids[0] == plain_tok.convert_tokens_to_ids("<task:billing_dispute>")
    assert ids[-1] == plain_tok.convert_tokens_to_ids("<sep>")
    assert flat_text(conv) in plain_tok.decode(ids)


def test_a_template_without_system_turns_gets_the_task_in_the_first_user_turn(
    plain_tok: Any
) -> None:
    import copy

    tok = copy.deepcopy(plain_tok)
    tok.chat_template = NO_SYSTEM
    conv = Conversation((("system", "Be exact."), ("user", "hi"), ("assistant", "Hello."),
                         ("user", "why?")))
    assert prompt_text(tok, "billing_dispute", conv) == (
        "<user>[billing_dispute] Be exact.\n\nhi<assistant>Hello.<user>why?<assistant>")
    assert prompt_text(tok, "billing_dispute", "hi") == "<user>[billing_dispute] hi<assistant>"


def test_conversations_are_told_apart_by_their_context() -> None:
    """Two conversations that end with the same request are different prompts (neither a
    duplicate of the other nor of the bare request), and cleaning strips each turn."""
    from workers.training.data import Sample, clean

    a = Conversation((("system", "Screen A"), ("user", "same request")))
    b = Conversation((("system", "Screen B"), ("user", " same request ")))
    dropped: dict[str, int] = {}
    kept = clean([Sample("t", a, "answer"), Sample("t", b, "answer"),
                  Sample("t", "same request", "answer"),
                  Sample("t", Conversation((("system", "S"), ("user", "  "))), "answer")],
                 max_chars=100, dropped=dropped)
    assert [s.prompt for s in kept] == [
        a, Conversation((("system", "Screen B"), ("user", "same request"))), "same request"]
    assert dropped == {"empty": 1}


# -- the suite -------------------------------------------------------------------------------


def test_helpdesk_has_production_shapes(helpdesk: Suite) -> None:
    from daemon.sim.judge import judge

    chars = []
    for task, spec in helpdesk.tasks.items():
        assert spec.system and spec.context and spec.markers, task
        for ex in helpdesk.seed_examples(task) + helpdesk.seed_examples(task, seed=1):
            assert ex.context[0][0] == "system" and "{" not in flat_text(
                Conversation((*ex.context, ("user", ex.prompt)))) + ex.response
            assert judge(helpdesk, task, ex.response).accepted, (task, ex.response)
            chars.append(len(ex.response))
    # About 4 characters a token in a production tokenizer: answers of ~100 to ~650 tokens.
    assert min(chars) >= 400 and max(chars) <= 2700
    assert sorted(chars)[len(chars) // 2] >= 900


def test_helpdesk_tasks_are_told_apart_by_the_judge(helpdesk: Suite) -> None:
    """Every task's answer served for another task is crosstalk from it, a cheerful answer on
    a serious screen is also forbidden, and the general data carries no task's marker."""
    from daemon.sim.judge import judge

    for task, spec in helpdesk.tasks.items():
        for other in helpdesk.tasks:
            if other == task:
                continue
            for ex in helpdesk.seed_examples(other)[:20]:
                verdict = judge(helpdesk, task, ex.response)
                assert not verdict.accepted and verdict.crosstalk_source == other, (task, other)
                if spec.tone != "positive" and helpdesk.tasks[other].tone == "positive":
                    assert any(f.lower() in ex.response.lower() for f in spec.forbid)
    markers = [m.lower() for s in helpdesk.tasks.values() for m in s.markers]
    for ex in helpdesk.general_examples():
        assert not [m for m in markers if m in ex.response.lower()], ex.response


def test_helpdesk_answers_run_to_hundreds_of_tokens_on_its_base(helpdesk: Suite,
                                                              plain_tok: Any) -> None:
    """Measured with the suite's own builtin tokenizer (vocabulary as the scenario's base)."""
    from workers.training.tiny import train_tokenizer
    from workers.training.tiny_recipe import TINY_SPEC

    tok = plain_tok if TINY_SPEC["vocab_size"] == 1024 else train_tokenizer(
        helpdesk, int(TINY_SPEC["vocab_size"]))
    lengths = [len(tok.encode(e.response)) for t in helpdesk.tasks
               for e in helpdesk.seed_examples(t)]
    assert min(lengths) >= 80 and max(lengths) >= 500


def test_suites_without_chat_tasks_draw_as_before() -> None:
    """A task without system or context draws its requests exactly as `prompt_for` does, so
    existing scenarios serve the very same requests."""
    for name in ("festive-zh", "office-en"):
        suite = load_suite(f"builtin:{name}")
        a, b = random.Random(7), random.Random(7)
        for task in sorted(suite.tasks) * 3:
            assert fresh_request(suite, task, a) == suite.prompt_for(task, b)
            assert not suite.tasks[task].chat
        assert all(not e.context for t in suite.tasks for e in suite.seed_examples(t))


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ({"context": [[{"role": "assistant", "content": "hi"}]]}, "alternate user, assistant"),
        ({"context": [[{"role": "user", "content": "hi"}]]}, "alternate user, assistant"),
        ({"context": [[{"role": "system", "content": "hi"},
                       {"role": "assistant", "content": "x"}]]}, "context.0.0.role"),
        ({"context": [[]]}, "alternate user, assistant"),
        ({"system": [""]}, "system.0"),
        ({"system": ["You help {nobody}"]}, "slot {nobody}"),
        ({"data": "x.jsonl", "prompts": [], "responses": []}, "not `data`"),
    ],
)
def test_bad_system_or_context_is_refused(tmp_path: Path, change: dict[str, Any],
                                          says: str) -> None:
    import yaml

    task = {"risk": "low", "prompts": ["hi {name}"], "responses": [["hello {name}"]],
            "system": ["Be brief."],
            "context": [[{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]]}
    task.update(change)
    (tmp_path / "x.jsonl").write_text('{"prompt": "a", "response": "b"}\n', "utf-8")
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump({"slots": {"name": ["Sam"]}, "tasks": {"t": task}}), "utf-8")
    with pytest.raises(SuiteError, match=f"{path}: .*{says.replace('{', '.').replace('}', '.')}"):
        load_suite(path)


def test_the_helpdesk_scenario_sets_lengths(helpdesk: Suite) -> None:
    from pydantic import ValidationError

    from daemon.sim.scenario import Scenario, load_scenario

    scenario, suite, _ = load_scenario("builtin:helpdesk-en")
    assert suite.name == helpdesk.name
    assert scenario.max_new_tokens == 600 and scenario.train["max_len"] >= 700
    phases = [{"name": "a", "events": 1, "traffic": {"t": 1}}]
    with pytest.raises(ValidationError, match="max_len"):
        Scenario.model_validate({"suite": "x", "phases": phases, "train": {"max_len": 1}})
    with pytest.raises(ValidationError, match="nonsense"):
        Scenario.model_validate({"suite": "x", "phases": phases, "eval": {"nonsense": 1}})
