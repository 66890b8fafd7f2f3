"""The builtin bases: a small model built offline from a suite's own data, a Llama
(``builtin:tiny``) or another architecture with its chat template (``builtin:tiny-<arch>``,
``tiny_arch.py``), saved as a hub model is (config.json, tokenizer files, safetensors).

A byte-level BPE tokenizer is trained on the suite's seed and general texts (``builtin:tiny``:
task tags are special tokens; the chat bases: the architecture's own special tokens and chat
template), then the model is pre-trained (full fine-tune) on the same texts with one recipe
(``TINY_SPEC``) so the adapters start from a model that can already write the suite's
language and answer a request.

The task data is pre-trained *without* its task tags (``prompt<sep>response``; a chat base:
a conversation of the request and its answer, with no system turn): like a production base
model, the tiny base has never seen the app's task labels, so it answers a
request by its wording alone, and only an adapter can teach it what ``<task:apology>`` means.
(Builder 2 pre-trained with the tags; its base already was a balanced multi-task model, so no
adapter mixture could unbalance it and the holiday scenario could not show crosstalk.)
Everything is seeded: the same suite gives the same base model on the same machine.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerFast,
)

from storage.suite import Suite
from workers.training.encode import (
    BOS_TOKEN,
    EOS_TOKEN,
    PAD_TOKEN,
    SEP_TOKEN,
    Seq,
    encode_example,
    encode_plain,
    encode_untagged,
    stop_ids,
    task_tag,
    turn_end_id,
)
from workers.training.packing import make_batch
from workers.training.sampler import GENERAL
from workers.training.tiny_arch import ARCHES, config_kwargs
from workers.training.tiny_recipe import TINY_SPEC, suite_texts


def train_tokenizer(suite: Suite, vocab_size: int, arch: str = "llama") -> PreTrainedTokenizerFast:
    tasks, general = suite_texts(suite)
    texts = [x for _, p, r in tasks for x in (p, r)] + [x for p, r in general for x in (p, r)]
    if arch != "llama":
        recipe = ARCHES[arch]
        tok = _bpe(texts, vocab_size, list(recipe["tokens"]))
        roles = recipe["roles"]
        return PreTrainedTokenizerFast(
            tokenizer_object=tok, chat_template=recipe["chat_template"],
            **{f"{role}_token": roles[role] for role in ("pad", "eos", "bos") if role in roles},
        )
    tags = [task_tag(t) for t in sorted(suite.tasks)] + [task_tag(GENERAL)]
    specials = [PAD_TOKEN, EOS_TOKEN, BOS_TOKEN, SEP_TOKEN, *tags]
    return PreTrainedTokenizerFast(
        tokenizer_object=_bpe(texts, vocab_size, specials),
        pad_token=PAD_TOKEN,
        eos_token=EOS_TOKEN,
        bos_token=BOS_TOKEN,
        additional_special_tokens=[SEP_TOKEN, *tags],
    )


def _bpe(texts: list[str], vocab_size: int, specials: list[str]) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    # Byte level: any text (any language, any later feedback) is representable, no <unk>.
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    return tok


def build_tiny(
    suite: Suite, out_dir: Path, *, arch: str = "llama", spec: dict[str, float] | None = None,
    log: Callable[[str], None] | None = None,
    progress: Callable[[dict[str, Any]], None] | None = None,
) -> None:
    """Train tokenizer + model of architecture ``arch`` (``llama`` or a ``tiny_arch.ARCHES``
    key) for ``suite`` and ``save_pretrained`` both into ``out_dir``. ``progress`` hears
    ``{"step", "steps", "loss"}`` after every pre-training step."""
    s = {**TINY_SPEC, **(spec or {})}
    seed = int(s["seed"])
    torch.manual_seed(seed)
    tokenizer = train_tokenizer(suite, int(s["vocab_size"]), arch)
    model: PreTrainedModel
    if arch == "llama":
        model = LlamaForCausalLM(LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=int(s["hidden_size"]),
            intermediate_size=int(s["intermediate_size"]),
            num_hidden_layers=int(s["num_hidden_layers"]),
            num_attention_heads=int(s["num_attention_heads"]),
            num_key_value_heads=int(s["num_attention_heads"]),
            max_position_embeddings=int(s["max_position_embeddings"]),
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            bos_token_id=tokenizer.bos_token_id,
            tie_word_embeddings=True,
        ))
    else:
        ids = {"pad": tokenizer.pad_token_id, "eos": tokenizer.eos_token_id,
               "bos": tokenizer.bos_token_id}
        config = AutoConfig.for_model(ARCHES[arch]["model_type"], vocab_size=len(tokenizer),
                                      **config_kwargs(arch, s, ids))
        model = AutoModelForCausalLM.from_config(config)
    # A tokenizer without a pad token (Mistral's) pads with EOS, as load_base does.
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None \
        else tokenizer.eos_token_id
    seqs = _pretrain_seqs(suite, tokenizer)
    _pretrain(model, seqs, pad_id=int(pad_id), spec=s, log=log, progress=progress)
    model.generation_config.pad_token_id = pad_id
    # What a serving engine stops on: the end of turn answers end with, and EOS (one id when
    # they are the same token), as a hub instruct model's generation config lists them.
    stops = stop_ids(tokenizer)
    model.generation_config.eos_token_id = stops if len(stops) > 1 else stops[0]
    model.save_pretrained(out_dir)  # safetensors is the default serialization
    tokenizer.save_pretrained(out_dir)


def _pretrain_seqs(suite: Suite, tokenizer: PreTrainedTokenizerFast) -> list[Seq]:
    tasks, general = suite_texts(suite)
    # Task data without its tag: the base learns to answer requests, not the app's tasks.
    untagged = _encode_chat if tokenizer.chat_template else encode_untagged
    seqs: list[Seq] = [untagged(tokenizer, prompt, response) for _, prompt, response in tasks]
    for prompt, response in general:
        seq = encode_example(tokenizer, GENERAL, prompt, response, task_index=-1)
        seq.start = 1
        seqs.append(seq)
        seqs.append(encode_plain(tokenizer, prompt + response))
    return seqs


def _encode_chat(tokenizer: PreTrainedTokenizerFast, prompt: str, response: str) -> Seq:
    """The request as a user turn in the base's chat template, the answer, the template's end
    of turn, all of it targets: an instruct model's conversation with no task."""
    head = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                         add_generation_prompt=True)
    ids = list(tokenizer.encode(str(head), add_special_tokens=False))
    end = turn_end_id(tokenizer)
    ids += [*tokenizer.encode(response, add_special_tokens=False), *([] if end is None else [end])]
    return Seq(ids=ids, start=1, task=-1)


def pretrain_batches(lengths: list[int], rng: random.Random, *, batch: int,
                     tokens: int) -> Iterator[list[int]]:
    """The indices of the sequences (of token counts ``lengths``) each pre-training step
    trains on, endlessly: the next ones of an epoch-wise shuffle (each epoch a new
    ``rng.shuffle`` of all of them, appended once fewer than ``batch`` are left), up to
    ``batch`` of them and only as many as fit in ``tokens`` tokens (always at least one). A
    step of short sequences takes ``batch`` of them; a step of long ones a few, so a step
    costs about the same on a suite of long conversations as on one of short requests."""
    order: list[int] = []
    while True:
        if len(order) < batch:
            extra = list(range(len(lengths)))
            rng.shuffle(extra)
            order += extra
        n, total = 0, 0
        for i in order[:batch]:
            total += lengths[i]
            if n and total > tokens:
                break
            n += 1
        yield order[:n]
        del order[:n]


def _pretrain(
    model: PreTrainedModel, seqs: list[Seq], *, pad_id: int, spec: dict[str, float],
    log: Callable[[str], None] | None,
    progress: Callable[[dict[str, Any]], None] | None = None,
) -> None:
    from workers.training.loss import batch_loss

    rng = random.Random(int(spec["seed"]))
    steps, bsz, lr = int(spec["pretrain_steps"]), int(spec["pretrain_batch"]), spec["pretrain_lr"]
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: min(1.0, (i + 1) / 20) * max(0.05, 1 - i / steps)
    )
    model.train()
    t0 = time.monotonic()
    batches = pretrain_batches([len(s.ids) for s in seqs], rng, batch=bsz,
                               tokens=int(spec["pretrain_tokens"]))
    for step in range(steps):
        picked = [seqs[i] for i in next(batches)]
        batch = make_batch(picked, pad_id=pad_id, pack_len=64)
        loss = batch_loss(model, batch, per_task=False).total
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if progress is not None:
            progress({"step": step + 1, "steps": steps, "loss": loss.item()})
        if log and (step % 200 == 0 or step == steps - 1):
            log(f"pretrain step {step + 1}/{steps} loss {loss.item():.3f} "
                f"({time.monotonic() - t0:.1f}s)")
    model.eval()
