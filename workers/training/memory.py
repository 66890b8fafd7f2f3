"""How much device memory a LoRA training step takes: an estimate from the base's shape.

Pure arithmetic, no torch: the trainer uses it to turn gradient checkpointing on when a step
would not fit (``TrainConfig.gradient_checkpointing="auto"``), and ``docs/gpu.md`` tabulates
it per base size and LoRA rank (``python -m workers.training.memory`` prints that table).

What a step holds:

- the frozen base weights (2 bytes a parameter in bf16, 4 in fp32);
- the LoRA weights, their gradients and AdamW's two moments, all fp32: 16 bytes a parameter;
- the activations backward needs, per token and decoder layer about ``6h + 2kv + 4i`` values
  (normalised inputs, queries/keys/values, attention output, the MLP's gate, up, activation
  and product; ``h`` hidden, ``kv`` key/value width, ``i`` MLP width); with gradient
  checkpointing only each layer's input (``h``) plus one layer's full set while it is
  recomputed. Attention adds nothing quadratic: SDPA's fused kernels and ``packed_sdpa``
  never hold a ``length x length`` matrix per example for backward on CUDA;
- the fp32 logits at target positions only, ``LOGIT_CHUNK`` of them at a time
  (``loss.target_logp``): logits, log-softmax and their gradient, 12 bytes an element;
- 1 GiB of CUDA context and allocator slack, plus 10 % fragmentation.

An estimate, not a bound: a real run's peak also depends on the kernels torch picks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

GIB = 1024**3
CONTEXT_BYTES = 1 * GIB
FRAGMENTATION = 1.10
LORA_STATE_BYTES = 16  # fp32 weight + gradient + two AdamW moments
LOGIT_BYTES = 12  # fp32 logits, log-softmax, gradient
LOGIT_CHUNK = 1 << 26  # logits made at a time by the loss (loss.target_logp): 256 MiB in fp32


@dataclass(frozen=True)
class BaseShape:
    params: int  # every parameter of the base model
    layers: int
    hidden: int
    intermediate: int  # MLP width
    vocab: int
    kv: int  # key/value projection width (kv heads x head dim)

    def lora_params(self, rank: int) -> int:
        """LoRA parameters with rank ``rank`` on all seven projections of every layer: ``r``
        times (inputs + outputs) of q, k, v, o, gate, up and down.

        >>> BaseShape(0, 1, 8, 16, 0, 4).lora_params(2)  # 2 * (9*8 + 2*4 + 3*16)
        256
        """
        per_layer = 9 * self.hidden + 2 * self.kv + 3 * self.intermediate
        return rank * per_layer * self.layers


@dataclass(frozen=True)
class MemoryEstimate:
    weights: int
    lora_state: int
    activations: int
    logits: int
    total: int  # bytes, with context and fragmentation

    @property
    def total_gib(self) -> float:
        return self.total / GIB


def estimate(shape: BaseShape, *, lora_params: int, tokens: int, weight_bytes: int = 2,
             checkpointing: bool = False) -> MemoryEstimate:
    """Peak memory of one training micro-step on ``tokens`` tokens (all of them targets, the
    worst case) with ``weight_bytes`` per base weight and activation (2: bf16, 4: fp32).

    >>> s = BaseShape(params=1000, layers=2, hidden=8, intermediate=16, vocab=10, kv=8)
    >>> e = estimate(s, lora_params=100, tokens=4, weight_bytes=2)
    >>> e.weights, e.lora_state, e.activations, e.logits
    (2000, 1600, 2048, 480)
    >>> estimate(s, lora_params=100, tokens=4, checkpointing=True).activations
    1152
    """
    per_layer = 6 * shape.hidden + 2 * shape.kv + 4 * shape.intermediate
    if checkpointing:
        acts = tokens * (shape.layers * shape.hidden + per_layer) * weight_bytes
    else:
        acts = tokens * shape.layers * per_layer * weight_bytes
    weights = shape.params * weight_bytes
    lora = lora_params * LORA_STATE_BYTES
    logits = min(tokens * shape.vocab, max(LOGIT_CHUNK, shape.vocab)) * LOGIT_BYTES
    total = int((weights + lora + acts + logits) * FRAGMENTATION) + CONTEXT_BYTES
    return MemoryEstimate(weights=weights, lora_state=lora, activations=acts, logits=logits,
                          total=total)


def shape_of(config: Any, params: int) -> BaseShape:
    """The shape of a transformers causal-LM config (Llama-style names, GPT-2's as fallback)."""

    def first(*names: str, default: int = 0) -> int:
        for name in names:
            value = getattr(config, name, None)
            if value:
                return int(value)
        return default

    hidden = first("hidden_size", "n_embd")
    heads = first("num_attention_heads", "n_head", default=1)
    head_dim = first("head_dim", default=hidden // heads)
    return BaseShape(params=params, layers=first("num_hidden_layers", "n_layer"), hidden=hidden,
                     intermediate=first("intermediate_size", "n_inner", default=4 * hidden),
                     vocab=first("vocab_size"),
                     kv=first("num_key_value_heads", default=heads) * head_dim)


def model_shape(model: Any) -> BaseShape:
    """The shape of a loaded (PEFT-wrapped) model; ``params`` counts the frozen ones."""
    get_base = getattr(model, "get_base_model", None)
    hf = get_base() if callable(get_base) else model
    frozen = sum(p.numel() for p in hf.parameters() if not p.requires_grad)
    return shape_of(hf.config, frozen)


# Public shapes of common instruct bases (their config.json), for the docs table.
BASES: dict[str, BaseShape] = {
    "0.5B (Qwen2.5-0.5B)": BaseShape(494_000_000, 24, 896, 4864, 151_936, 128),
    "1.5B (Qwen2.5-1.5B)": BaseShape(1_540_000_000, 28, 1536, 8960, 151_936, 256),
    "3B (Llama-3.2-3B)": BaseShape(3_210_000_000, 28, 3072, 8192, 128_256, 1024),
    "7B (Mistral-7B)": BaseShape(7_240_000_000, 32, 4096, 14336, 32_768, 1024),
    "8B (Llama-3.1-8B)": BaseShape(8_030_000_000, 32, 4096, 14336, 128_256, 1024),
    "14B (Qwen2.5-14B)": BaseShape(14_700_000_000, 48, 5120, 13824, 152_064, 1024),
}


def table(tokens: int = 16 * 512, ranks: tuple[int, ...] = (8, 16, 64)) -> str:
    """A Markdown table: estimated GiB per base and rank, without / with checkpointing."""
    head = "| base | " + " | ".join(f"r={r}" for r in ranks) + " |"
    lines = [head, "|---|" + "---:|" * len(ranks)]
    for name, shape in BASES.items():
        cells = []
        for r in ranks:
            lp = shape.lora_params(r)
            off = estimate(shape, lora_params=lp, tokens=tokens).total_gib
            on = estimate(shape, lora_params=lp, tokens=tokens, checkpointing=True).total_gib
            cells.append(f"{off:.1f} / {on:.1f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(table())
