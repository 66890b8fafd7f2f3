"""The architectures the builtin base builder makes (``builtin:tiny`` is Llama; the others
are ``builtin:tiny-<arch>``): each one's model config, special tokens and chat template.

Plain data, no torch: the policy tick hashes it (with ``TINY_SPEC`` and the suite texts) to
name the build. Each non-Llama base is the shape of an instruct model from the hub: its own
config class (``AutoConfig.for_model``), its own chat template in the saved tokenizer, and
special tokens named as the real family names them, so a loop on it exercises the chat
template path of ``encode.py`` as a hub base would. The tokenizer's EOS is the real
family's: for Qwen2 (instruct), Mistral and the ChatML GPT-2 it is the token that closes an
assistant turn, for Gemma (``<eos>`` against ``<end_of_turn>``) and Phi-3 (``<|endoftext|>``
against ``<|end|>``) it is not, so answers end with the template's own end of turn
(``encode.turn_end_id``) and the built generation config stops on both.

``builtin:tiny`` keeps no chat template and tags tasks with special tokens
(``<task:...>``, ``<sep>``); the chat bases have no task tags in their vocabulary, as no hub
model has: the task is marked the way ``encode.prompt_text`` marks it for a chat template.
"""

from __future__ import annotations

from typing import Any

# ChatML (Qwen2; GPT-2 has no chat format of its own, so it gets ChatML too).
CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# Gemma's own template: it refuses a system turn (encode.prompt_text then puts the task
# into the user turn) and calls the assistant "model".
GEMMA = (
    "{{ bos_token }}"
    "{% if messages[0]['role'] == 'system' %}"
    "{{ raise_exception('System role not supported') }}{% endif %}"
    "{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}"
    "{% if message['role'] == 'assistant' %}{% set role = 'model' %}"
    "{% else %}{% set role = message['role'] %}{% endif %}"
    "{{ '<start_of_turn>' + role + '\\n' + message['content'] | trim + '<end_of_turn>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}"
)

# Mistral's [INST] format; a system turn is prepended to the next user turn.
MISTRAL = (
    "{{ bos_token }}{% set ns = namespace(system='') %}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{% set ns.system = message['content'] + '\\n\\n' %}"
    "{% elif message['role'] == 'user' %}"
    "{{ '[INST] ' + ns.system + message['content'] + ' [/INST]' }}{% set ns.system = '' %}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token }}"
    "{% endif %}{% endfor %}"
)

# Phi-3's <|system|>/<|user|>/<|assistant|> turns closed by <|end|>.
PHI3 = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\\n' + message['content'] + '<|end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)

# Per architecture: ``model_type`` (transformers' config registry), extra config keywords
# beyond the shared shape of TINY_SPEC, the tokenizer's special tokens (``tokens``: every
# special token, in vocabulary order; ``roles``: which of them is pad/eos/bos, absent = none)
# and the chat template. Word embeddings are tied where the real family ties them.
ARCHES: dict[str, dict[str, Any]] = {
    "qwen2": {
        "model_type": "qwen2",
        "config": {"kv_heads": 2, "tie_word_embeddings": True, "use_sliding_window": False},
        "tokens": ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        "roles": {"pad": "<|endoftext|>", "eos": "<|im_end|>"},
        "chat_template": CHATML,
    },
    "gemma": {
        "model_type": "gemma",
        "config": {"kv_heads": 1, "tie_word_embeddings": True,
                   "hidden_activation": "gelu_pytorch_tanh"},
        "tokens": ["<pad>", "<eos>", "<bos>", "<start_of_turn>", "<end_of_turn>"],
        "roles": {"pad": "<pad>", "eos": "<eos>", "bos": "<bos>"},
        "chat_template": GEMMA,
    },
    "mistral": {
        "model_type": "mistral",
        "config": {"kv_heads": 2, "tie_word_embeddings": False, "sliding_window": None},
        # No pad token, as in the real tokenizer: load_base pads with EOS.
        "tokens": ["<unk>", "<s>", "</s>", "[INST]", "[/INST]"],
        "roles": {"eos": "</s>", "bos": "<s>"},
        "chat_template": MISTRAL,
    },
    "phi3": {
        "model_type": "phi3",
        "config": {"kv_heads": 4, "tie_word_embeddings": False},
        "tokens": ["<|endoftext|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"],
        "roles": {"pad": "<|endoftext|>", "eos": "<|endoftext|>"},
        "chat_template": PHI3,
    },
    "gpt2": {
        "model_type": "gpt2",  # Conv1D projections (c_attn, c_proj, c_fc)
        "config": {"tie_word_embeddings": True},
        "tokens": ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        "roles": {"pad": "<|endoftext|>", "eos": "<|im_end|>", "bos": "<|endoftext|>"},
        "chat_template": CHATML,
    },
}


def config_kwargs(arch: str, spec: dict[str, float], ids: dict[str, int | None]) -> dict[str, Any]:
    """Keywords of ``AutoConfig.for_model(ARCHES[arch]["model_type"], ...)``: the shape of
    ``spec`` in the architecture's own keyword names, with the tokenizer's ``ids``."""
    extra = dict(ARCHES[arch]["config"])
    hidden, heads = int(spec["hidden_size"]), int(spec["num_attention_heads"])
    special = {"pad_token_id": ids["pad"], "eos_token_id": ids["eos"], "bos_token_id": ids["bos"]}
    if arch == "gpt2":
        return {"n_embd": hidden, "n_inner": int(spec["intermediate_size"]),
                "n_layer": int(spec["num_hidden_layers"]), "n_head": heads,
                "n_positions": int(spec["max_position_embeddings"]), **special, **extra}
    kv_heads = min(int(extra.pop("kv_heads")), heads)
    out = {"hidden_size": hidden, "intermediate_size": int(spec["intermediate_size"]),
           "num_hidden_layers": int(spec["num_hidden_layers"]), "num_attention_heads": heads,
           "num_key_value_heads": kv_heads,
           "max_position_embeddings": int(spec["max_position_embeddings"]), **special, **extra}
    if arch == "gemma":
        out["head_dim"] = hidden // heads  # Gemma's default (256) is the 7B model's
    return out
