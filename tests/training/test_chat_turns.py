"""Chat templates, end of turn and the prompt contract, on tokenizers only (no model):

- a trained answer ends with the token the template itself closes an assistant turn with,
  on every builtin chat base and on hub-shaped tokenizers whose EOS is another token;
- the published contract builds, for a conversation, exactly the tokens training renders;
- the simulated app's engine calls carry those tokens and the stop ids.
"""

from __future__ import annotations

from typing import Any

import pytest

from daemon.sim.app import EngineGenerator
from storage.suite import Suite
from workers.serving.contract import build_prompt, contract_messages, prompt_contract
from workers.training.encode import (
    Conversation,
    encode_example,
    flat_text,
    prompt_ids,
    stop_ids,
    turn_end_id,
)
from workers.training.tiny_arch import ARCHES

# Closing tokens of the builtin chat bases' templates, and their tokenizers' EOS.
CLOSES = {"qwen2": ("<|im_end|>", "<|im_end|>"), "gemma": ("<end_of_turn>", "<eos>"),
          "mistral": ("</s>", "</s>"), "phi3": ("<|end|>", "<|endoftext|>"),
          "gpt2": ("<|im_end|>", "<|im_end|>")}
CONV = Conversation((("system", "Be brief."), ("user", "我的订单没到"),
                     ("assistant", "请告诉我订单号。"), ("user", "帮我道歉")))


@pytest.fixture(scope="module")
def toks(suite: Suite) -> dict[str, Any]:
    from workers.training.tiny import train_tokenizer

    return {arch: train_tokenizer(suite, 512, arch) for arch in ARCHES}


def _ids(tok: Any, messages: list[dict[str, str]], **kwargs: Any) -> list[int]:
    text = tok.apply_chat_template(messages, tokenize=False, **kwargs)
    return list(tok.encode(str(text), add_special_tokens=False))


@pytest.mark.parametrize("arch", sorted(ARCHES))
def test_a_trained_answer_is_the_templates_assistant_turn(arch: str, toks: dict[str, Any]) -> None:
    tok = toks[arch]
    close, eos = CLOSES[arch]
    assert tok.eos_token == eos
    answer = "对不起，让您久等了。"
    seq = encode_example(tok, "apology", "帮我道歉", answer, task_index=0)
    # The same conversation with its answer, rendered by the template itself.
    task = ([{"role": "user", "content": "[apology] 帮我道歉"}] if arch == "gemma" else
            [{"role": "system", "content": "Task: apology"},
             {"role": "user", "content": "帮我道歉"}])
    full = _ids(tok, [*task, {"role": "assistant", "content": answer}])
    assert full[:len(seq.ids)] == seq.ids
    assert tok.decode(full[len(seq.ids):]).strip() == ""  # only the newline after the turn
    targets = seq.ids[seq.start:]
    assert tok.convert_ids_to_tokens(targets[-1:]) == [close]
    assert targets[:-1] == tok.encode(answer, add_special_tokens=False)
    # Generation stops on the end of turn first, and on EOS.
    assert stop_ids(tok) == list(dict.fromkeys(tok.convert_tokens_to_ids([close, eos])))


# Hub templates as the families ship them (abridged to the assistant turn's shape).
PHI3_HUB = ("{% for m in messages %}{{ '<|' + m['role'] + '|>\n' + m['content'] + '<|end|>\n' }}"
            "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}"
            "{% else %}{{ eos_token }}{% endif %}")
LLAMA3 = ("{% for m in messages %}{% if loop.index0 == 0 %}{{ bos_token }}{% endif %}"
          "{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\n\n' + m['content'] | trim"
          " + '<|eot_id|>' }}{% endfor %}{% if add_generation_prompt %}"
          "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}")
LLAMA2 = ("{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}"
          "{{ '[INST] ' + m['content'] + ' [/INST]' }}{% else %}"
          "{{ ' ' + m['content'] + ' ' + eos_token }}{% endif %}{% endfor %}")
ALPACA = ("{% for m in messages %}{% if m['role'] == 'user' %}"
          "{{ '### Instruction:\n' + m['content'] + '\n\n### Response:\n' }}"
          "{% else %}{{ m['content'] + '\n\n' }}{% endif %}{% endfor %}")
CHATML = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + "
          "'<|im_end|>\n' }}{% endfor %}"
          "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
GEMMA_HUB = ARCHES["gemma"]["chat_template"]
HUB = {  # template, special tokens, EOS, BOS, the token an answer must end with
    "gemma-it": (GEMMA_HUB, ["<pad>", "<eos>", "<bos>", "<start_of_turn>", "<end_of_turn>"],
                 "<eos>", "<bos>", "<end_of_turn>"),
    "phi3-mini": (PHI3_HUB, ["<|endoftext|>", "<|system|>", "<|user|>", "<|assistant|>",
                             "<|end|>"], "<|endoftext|>", None, "<|end|>"),
    "llama3-instruct": (LLAMA3, ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>",
                                 "<|end_header_id|>", "<|eot_id|>"],
                        "<|end_of_text|>", "<|begin_of_text|>", "<|eot_id|>"),
    "llama2-chat": (LLAMA2, ["<unk>", "<s>", "</s>"], "</s>", "<s>", "</s>"),
    "qwen2.5-base": (CHATML, ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                     "<|endoftext|>", None, "<|im_end|>"),
    "alpaca": (ALPACA, ["<unk>", "</s>"], "</s>", None, "</s>"),  # closes with no token: EOS
}


@pytest.mark.parametrize("name", sorted(HUB))
def test_the_end_of_turn_is_read_from_a_hub_template(name: str) -> None:
    from transformers import PreTrainedTokenizerFast

    from workers.training.tiny import _bpe

    template, specials, eos, bos, close = HUB[name]
    tok = PreTrainedTokenizerFast(tokenizer_object=_bpe(["hello there, sorry", "ok"], 300,
                                                        specials),
                                  chat_template=template, eos_token=eos, bos_token=bos)
    end = turn_end_id(tok)
    assert tok.convert_ids_to_tokens([end]) == [close]
    seq = encode_example(tok, "apology", "hi", "sorry", task_index=0)
    assert seq.ids[-1] == end
    assert stop_ids(tok)[0] == end and tok.eos_token_id in stop_ids(tok)
    # The cache follows the template: the same tokenizer given another one reads it again.
    tok.chat_template = ALPACA
    assert turn_end_id(tok) == tok.eos_token_id


@pytest.mark.parametrize("arch", ["gemma", "mistral", "phi3", "qwen2"])
def test_the_published_contract_renders_a_conversation_as_training_does(
        arch: str, toks: dict[str, Any]) -> None:
    """An app holding only the route's contract and the base's chat template (what a chat API
    applies) builds, for a whole conversation, the token ids training and generation use."""
    tok = toks[arch]
    contract = prompt_contract(tok, "apology")
    assert contract["style"] == "chat"
    assert ("system" in contract) != ("user_prefix" in contract)
    assert ("user_prefix" in contract) is (arch == "gemma")  # its template refuses system
    sent = contract_messages(contract, Conversation.of(CONV.as_messages()))
    ids = list(tok.encode(str(tok.apply_chat_template(sent, tokenize=False,
                                                       add_generation_prompt=True)),
                          add_special_tokens=contract["add_special_tokens"]))
    want = prompt_ids(tok, "apology", CONV)
    assert ids == want
    assert encode_example(tok, "apology", CONV, "对不起", task_index=0).ids[:len(want)] == want
    for turn in CONV.turns:
        assert turn[1] in tok.decode(ids)
    # A single request through the completion prefix and suffix: the same tokens again.
    one = tok.encode(build_prompt(contract, "帮我道歉"), add_special_tokens=False)
    assert one == prompt_ids(tok, "apology", "帮我道歉")
    assert contract["stop_token_ids"] == stop_ids(tok)


def test_the_simulated_app_sends_conversations_as_the_contract_says(
        suite: Suite, toks: dict[str, Any]) -> None:
    gen = EngineGenerator("http://engine:8000", max_tokens=24, temperature=0.0)
    tok = toks["gemma"]
    route = {"served_as": "shared-v2", "prompt": prompt_contract(tok, "apology")}
    calls = gen.requests(["帮我道歉", CONV, "谢谢"], route, seed=5, max_tokens=600)
    (chat_path, chat, chat_idx), (path, plain, idx) = calls
    assert (chat_path, chat_idx, path, idx) == ("/v1/chat/completions", [1], "/v1/completions",
                                                [0, 2])
    assert _ids(tok, chat["messages"], add_generation_prompt=True) == prompt_ids(tok, "apology",
                                                                                 CONV)
    assert [tok.encode(p, add_special_tokens=plain["add_special_tokens"])
            for p in plain["prompt"]] == [prompt_ids(tok, "apology", p) for p in ("帮我道歉", "谢谢")]
    for body in (chat, plain):
        assert body["model"] == "shared-v2" and body["seed"] == 5
        assert body["stop_token_ids"] == stop_ids(tok) and body["temperature"] == 0.0
        assert body["max_tokens"] == 600  # the app's answer length, not the generator's 24

    # Under a tag contract a conversation is one completion prompt: its turns as role lines.
    from workers.training.tiny import train_tokenizer

    plain_tok = train_tokenizer(suite, 512)
    route = {"served_as": "shared-v1", "prompt": prompt_contract(plain_tok, "apology")}
    [(path, body, idx)] = gen.requests([CONV], route, seed=1)
    assert path == "/v1/completions" and idx == [0] and body["max_tokens"] == 24
    assert body["prompt"] == [f"<task:apology>{flat_text(CONV)}<sep>"]
    assert plain_tok.encode(body["prompt"][0], add_special_tokens=False) == prompt_ids(
        plain_tok, "apology", CONV)
