"""The trainer: repeatable with a seed on CPU, exact resume, per-task logs, affinity."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from storage.suite import Suite
from workers.training.base_model import load_base
from workers.training.data import assemble
from workers.training.sampler import default_ratios
from workers.training.trainer import TrainingAborted, train_adapter


def _lora_weights(model: Any) -> dict[str, torch.Tensor]:
    from peft import get_peft_model_state_dict

    return {k: v.detach().clone() for k, v in get_peft_model_state_dict(model).items()}


def _run(suite: Suite, base_root: Path, cfg: Any, **kwargs: Any) -> Any:
    bundle = load_base(suite, base_root, device="cpu")
    data = assemble(suite, sorted(suite.tasks))
    return train_adapter(bundle, data, ratios=default_ratios(data.sizes()), config=cfg,
                         general_share=suite.general_share, **kwargs)


def test_repeatable_and_resumable(suite: Suite, base_root: Path, train_cfg: Any,
                                  tmp_path: Path) -> None:
    cfg = train_cfg(steps=16, checkpoint_every=4, seed=11)
    first = _run(suite, base_root, cfg)
    second = _run(suite, base_root, cfg)
    w1, w2 = _lora_weights(first.model), _lora_weights(second.model)
    assert w1.keys() == w2.keys() and w1
    assert all(torch.equal(w1[k], w2[k]) for k in w1), "same seed must give the same weights"
    assert any(not torch.equal(v, torch.zeros_like(v)) for k, v in w1.items() if "lora_B" in k)
    # Interrupted after step 10 (checkpoint at 8), then resumed: same weights as uninterrupted.
    ckpt = tmp_path / "ckpt"
    calls = {"n": 0}

    def stop_after_ten() -> bool:
        calls["n"] += 1
        return calls["n"] > 10

    with pytest.raises(TrainingAborted):
        _run(suite, base_root, cfg, checkpoint_dir=ckpt, should_stop=stop_after_ten)
    assert (ckpt / "ckpt.json").is_file()
    assert not [p for p in ckpt.iterdir() if p.suffix in (".pt", ".bin", ".pkl")]
    resumed = _run(suite, base_root, cfg, checkpoint_dir=ckpt)
    assert resumed.resumed_from == 8
    w3 = _lora_weights(resumed.model)
    assert all(torch.equal(w1[k], w3[k]) for k in w1), "resume must continue exactly"
    # A different seed gives different weights.
    other = _run(suite, base_root, train_cfg(steps=16, seed=12))
    w4 = _lora_weights(other.model)
    assert any(not torch.equal(w1[k], w4[k]) for k in w1)


def test_logs_ratios_and_affinity(suite: Suite, base_root: Path, train_cfg: Any) -> None:
    from workers.training.config import Stage

    cfg = train_cfg(steps=20, affinity_measurements=2,
                    stages=[Stage(kind="mixed", fraction=1.0)])
    seen: list[dict[str, Any]] = []
    bundle = load_base(suite, base_root, device="cpu")
    data = assemble(suite, sorted(suite.tasks))
    ratios = {"greeting": 0.6, "thanks": 0.3, "apology": 0.1}
    result = train_adapter(bundle, data, ratios=ratios, config=cfg, general_share=0.25,
                           progress=seen.append)
    assert len(seen) == 20 and seen[-1]["step"] == 20
    assert set(result.history[-1]["task_loss"]) == {"greeting", "thanks", "apology", "_general"}
    total = 20 * cfg.batch_examples
    assert abs(result.drawn["_general"] - 0.25 * total) <= 1
    for task, r in ratios.items():
        assert abs(result.drawn.get(task, 0) - 0.75 * r * total) <= 1
    assert set(result.affinity) == set(ratios)
    assert all(set(row) == set(ratios) for row in result.affinity.values())
    # Training task i lowers task i's own loss: the diagonal is positive.
    assert all(result.affinity[t][t] > 0 for t in ratios)
    assert result.tokens > 0


def test_observed_tasks_join_the_affinity_probes_only(suite: Suite, base_root: Path,
                                                       train_cfg: Any) -> None:
    from workers.training.config import Stage

    cfg = train_cfg(steps=6, affinity_measurements=1, stages=[Stage(kind="mixed", fraction=1.0)])
    bundle = load_base(suite, base_root, device="cpu")
    data = assemble(suite, ["greeting", "thanks"])
    apology = assemble(suite, ["apology"]).tasks["apology"].train
    result = train_adapter(bundle, data, ratios={"greeting": 0.5, "thanks": 0.5}, config=cfg,
                           general_share=0.25, observe={"apology": apology})
    assert set(result.affinity) == {"greeting", "thanks", "apology"}
    assert all(set(row) == set(result.affinity) for row in result.affinity.values())
    assert "apology" not in result.drawn and "apology" not in result.task_loss
    # The same run without the observer trains the same weights: probes restore them.
    plain = train_adapter(load_base(suite, base_root, device="cpu"), data,
                          ratios={"greeting": 0.5, "thanks": 0.5}, config=cfg,
                          general_share=0.25)
    w1, w2 = _lora_weights(result.model), _lora_weights(plain.model)
    assert all(torch.equal(w1[k], w2[k]) for k in w1)


def test_gradient_accumulation_draws_more_per_step(suite: Suite, base_root: Path,
                                                   train_cfg: Any) -> None:
    one = _run(suite, base_root, train_cfg(steps=3, grad_accum=1, affinity_measurements=0))
    two = _run(suite, base_root, train_cfg(steps=3, grad_accum=2, affinity_measurements=0))
    assert sum(two.drawn.values()) == 2 * sum(one.drawn.values()) == 2 * 3 * 8
    assert two.steps == one.steps == 3


def test_per_task_stage_keeps_the_general_share(suite: Suite, base_root: Path,
                                               train_cfg: Any) -> None:
    from workers.training.config import Stage

    cfg = train_cfg(steps=12, affinity_measurements=0,
                    stages=[Stage(kind="per_task", fraction=1.0, lr_scale=0.5)])
    seen: list[dict[str, Any]] = []
    result = _run(suite, base_root, cfg, progress=seen.append)
    total = 12 * cfg.batch_examples
    assert abs(result.drawn["_general"] - suite.general_share * total) <= 3
    assert {s["stage"] for s in seen} == {"per_task"}


def test_gradient_checkpointing_trains_the_same(suite: Suite, base_root: Path,
                                                train_cfg: Any) -> None:
    """Recomputing activations in backward (inside the packed segments) changes memory,
    not the result: same losses and LoRA weights as keeping them."""
    kept = _run(suite, base_root, train_cfg(steps=6, log_every=1, affinity_measurements=0,
                                            gradient_checkpointing="off"))
    redone = _run(suite, base_root, train_cfg(steps=6, log_every=1, affinity_measurements=0,
                                              gradient_checkpointing="on"))
    assert [h["loss"] for h in redone.history] == pytest.approx(
        [h["loss"] for h in kept.history], rel=1e-5)
    w1, w2 = _lora_weights(kept.model), _lora_weights(redone.model)
    assert all(torch.allclose(w1[k], w2[k], atol=1e-6) for k in w1)
    # Trained with a changing loss, and the model is handed back without checkpointing.
    assert kept.history[0]["loss"] != kept.history[-1]["loss"]
    assert not redone.model.get_base_model().is_gradient_checkpointing


def test_packed_rows_hold_the_whole_micro_batch(suite: Suite, base_root: Path,
                                                train_cfg: Any) -> None:
    from workers.training.packed_attention import NAME
    from workers.training.trainer import encode_pools, row_length

    bundle = load_base(suite, base_root, device="cpu")
    pools = encode_pools(bundle.tokenizer, assemble(suite, sorted(suite.tasks)), 128)
    cfg = train_cfg()
    assert row_length(cfg, pools, bundle.device, NAME) is None
    assert row_length(cfg, pools, bundle.device, "flash_attention_2") is None
    dense = row_length(cfg, pools, bundle.device, "eager")
    assert dense is not None and dense % 16 == 0
    assert row_length(train_cfg(pack_len=48), pools, bundle.device, NAME) == 48
    result = _run(suite, base_root, train_cfg(steps=2, affinity_measurements=0))
    assert result.model.get_base_model().config._attn_implementation == "sdpa"
