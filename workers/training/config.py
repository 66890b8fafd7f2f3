"""Training, evaluation and gate configuration (pydantic, saved into each version's adaptd.json).

No torch here: the job runner and the CLI read and validate configs without loading models.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from policies.signals import Risk

StageKind = Literal["mixed", "per_task", "hard"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LoraSettings(_Model):
    """LoRA shape. ``target_modules=None`` finds the attention/MLP Linear layers automatically."""

    r: int = Field(8, ge=1, le=256)
    alpha: int = Field(16, ge=1)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)  # 0 keeps CPU runs bit-repeatable
    target_modules: list[str] | None = None


class Stage(_Model):
    """One stage of the schedule.

    ``mixed``: every batch drawn by the mixture ratios. ``per_task``: one block of batches per
    task, block lengths proportional to the ratios (so totals still follow the ratios).
    ``hard``: batches drawn from the tasks whose running loss is at or above the median.
    ``fraction`` is this stage's share of ``TrainConfig.steps``; ``lr_scale`` multiplies the LR.
    """

    kind: StageKind
    fraction: float = Field(gt=0.0, le=1.0)
    lr_scale: float = Field(1.0, gt=0.0, le=10.0)


def _default_stages() -> list[Stage]:
    return [
        Stage(kind="mixed", fraction=0.7, lr_scale=1.0),
        Stage(kind="per_task", fraction=0.15, lr_scale=0.5),
        Stage(kind="hard", fraction=0.15, lr_scale=0.3),
    ]


def _high_risk_only() -> list[Risk]:
    return ["high"]


class AuditConfig(_Model):
    """The self-audit after training (``audit.py``): sample the adapter's tasks of the
    ``risks`` levels on ``samples`` fresh requests each, as production samples, and train
    ``steps`` more steps with the outputs that carry another task's style as negatives;
    ``rounds`` times at most, fewer when a round finds nothing (``audit.audit_done``).
    ``rounds=0`` turns it off."""

    rounds: int = Field(3, ge=0, le=20)
    samples: int = Field(256, ge=1, le=100_000)
    steps: int = Field(100, ge=1, le=1_000_000)
    risks: list[Risk] = Field(default_factory=_high_risk_only)
    # Rounds in which a task audited only because the policy engine flagged it (its users saw
    # it leak: ``RiskPolicy.audit_at``), not for its risk, is sampled. One round does about as
    # well as three on a shared adapter's cheerful tasks at a third of the cost.
    flagged_rounds: int = Field(1, ge=0, le=20)


class TrainConfig(_Model):
    """One training run of an adapter."""

    steps: int = Field(120, ge=1, le=1_000_000)
    # An adapter with n tasks trains ``steps * n ** task_scaling`` steps (``for_tasks``). With
    # 1.0 every task of a shared adapter is drawn about as often as in a one-task adapter;
    # with 0 (fixed steps) a four-task adapter sees each task a quarter as often and answers
    # terse requests in a co-task's style more often. 0.5 is
    # the middle way for adapters of many tasks on a large model, where steps are dear. Above
    # 1 a shared adapter sees each task more often than a one-task adapter does; at 1.5 a
    # seven-task adapter (1,852 steps) already fails the retention gate (bench/loop.py).
    task_scaling: float = Field(1.0, ge=0.0, le=2.0)
    batch_examples: int = Field(16, ge=1, le=4096)  # examples per optimizer micro-step
    grad_accum: int = Field(1, ge=1, le=1024)
    lr: float = Field(2e-3, gt=0.0, le=1.0)
    weight_decay: float = Field(0.0, ge=0.0)
    warmup_steps: int = Field(5, ge=0)
    max_len: int = Field(128, ge=8, le=32768)  # tokens per example (longer ones are dropped)
    # Tokens per packed row; None: automatic (trainer.row_length): one row per micro-batch
    # where attention runs per example (packed_attention), else short rows on a CPU.
    pack_len: int | None = Field(None, ge=8, le=65536)
    packing: bool = True  # False: length-grouped rows padded to the longest in the batch
    # Recompute each decoder layer's activations in backward instead of keeping them: less
    # memory, about a third more compute. "auto": on when the estimated step
    # (workers/training/memory.py) would take more than 85 % of the GPU's memory; off on CPU.
    gradient_checkpointing: Literal["auto", "on", "off"] = "auto"
    seed: int = 0
    stages: list[Stage] = Field(default_factory=_default_stages)
    lora: LoraSettings = Field(default_factory=LoraSettings)
    unlikelihood_weight: float = Field(0.1, ge=0.0, le=10.0)
    negative_share: float = Field(0.1, ge=0.0, le=0.5)  # of a task's draws, when it has any
    general_share: float | None = Field(None, ge=0.0, lt=1.0)  # None: the suite's value
    checkpoint_every: int = Field(20, ge=1)
    affinity_measurements: int = Field(3, ge=0, le=100)  # TAG lookahead probes per run
    log_every: int = Field(10, ge=1)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    audit: AuditConfig = Field(default_factory=AuditConfig)

    @model_validator(mode="after")
    def _stages_sum(self) -> TrainConfig:
        total = sum(s.fraction for s in self.stages)
        if not self.stages or abs(total - 1.0) > 1e-6:
            raise ValueError(f"stage fractions must sum to 1 (got {total:.3f})")
        return self

    def general_share_or(self, suite_share: float) -> float:
        """The share of general data to train with: this config's, else the suite's.

        >>> TrainConfig().general_share_or(0.3), TrainConfig(general_share=0.1).general_share_or(0.3)
        (0.3, 0.1)
        """
        return self.general_share if self.general_share is not None else suite_share

    def for_tasks(self, n_tasks: int) -> TrainConfig:
        """This config with ``steps`` resolved for an adapter of ``n_tasks`` tasks (and
        ``task_scaling`` 0, so the copy saved next to a version is exactly what ran).

        >>> cfg = TrainConfig(steps=100, task_scaling=1.0)
        >>> cfg.for_tasks(4).steps, cfg.for_tasks(1).steps
        (400, 100)
        >>> TrainConfig(steps=100, task_scaling=0.5).for_tasks(4).steps
        200
        >>> TrainConfig(steps=100, task_scaling=1.5).for_tasks(4).steps
        800
        >>> TrainConfig(steps=100, task_scaling=0.0).for_tasks(4).steps  # fixed steps
        100
        """
        steps = max(1, round(self.steps * max(n_tasks, 1) ** self.task_scaling))
        return self.model_copy(update={"steps": steps, "task_scaling": 0.0})

    def stage_steps(self) -> list[tuple[Stage, int]]:
        """Steps per stage; rounding goes to the first stage so the total is exact."""
        counts = [int(s.fraction * self.steps) for s in self.stages]
        counts[0] += self.steps - sum(counts)
        return list(zip(self.stages, counts, strict=True))


class DataConfig(_Model):
    """How training data is assembled and cleaned."""

    heldout_fraction: float = Field(0.15, ge=0.0, lt=1.0)
    heldout_min: int = Field(4, ge=0)  # at least this many held-out examples per task
    # Longer prompts/responses are dropped; 16 KiB, an event's output limit, so no answer a
    # valid event carries is dropped for its length (`train.max_len` bounds the tokens).
    max_chars: int = Field(16384, ge=1)
    max_rows_per_task: int = Field(5000, ge=1)  # newest SQL rows first


class EvalConfig(_Model):
    """Evaluation cost knobs: small by design, eval runs inside every training job."""

    prompts_per_task: int = Field(16, ge=1, le=1024)
    max_new_tokens: int = Field(48, ge=1, le=4096)
    # Decode as production does. Greedy decoding shows only each prompt's most likely answer,
    # so a model that answers an ambiguous request in another task's style one time in five
    # looks clean; sampled outputs show that leak at its real rate. Candidate and production
    # draw with the same seed per task (common random numbers), so their difference is
    # less noisy than two independent draws.
    sampling: bool = True
    samples_per_prompt: int = Field(4, ge=1, le=64)
    temperature: float = Field(0.8, gt=0.0, le=10.0)
    top_p: float = Field(0.95, gt=0.0, le=1.0)
    seed: int = 0
    general_examples: int = Field(32, ge=0)
    # One generate call per task and side at the default 16 × 4 answers (greedy answers do
    # not depend on the batch size).
    batch_size: int = Field(64, ge=1)
    crosstalk_margin: float = Field(2.0, ge=0.0)  # log-odds the detector needs to flag a leak


class GateConfig(_Model):
    """Per-risk tolerances: how much a task's quality may drop (or crosstalk rise)."""

    tolerance: dict[str, float] = Field(
        default_factory=lambda: {"high": 0.02, "medium": 0.05, "low": 0.08}
    )
    # Targeted tasks must not get worse; 0.02 is the noise floor of the default eval (16
    # sampled prompts per task), below which "worse" cannot be told from chance.
    targeted_tolerance: float = Field(0.02, ge=0.0)
    # A task with no production version yet is compared with the bare base model: the first
    # adapter must not make it much worse, but small differences are no reason to serve none.
    bootstrap_tolerance: float = Field(0.15, ge=0.0)
    general_loss_tolerance: float = Field(0.10, ge=0.0)  # relative rise of general-data loss
    # A drop must also be significant: larger than ``z`` standard errors of the paired
    # per-output differences (same prompts, same random draws). With 64 sampled outputs a
    # task's quality moves by a few points between two equally good models; without this,
    # such noise rejects versions that fix a neighbour. 0 disables (tolerances alone).
    z: float = Field(1.64, ge=0.0)

    # Simulation only: the baseline policies of `adaptd simulate` (policies.schedule) judge a
    # shared adapter's version as a team without a per-task gate does, ``mean``: promote
    # unless the average quality over tasks drops by more than ``mean_tolerance``, so an
    # average can hide one task getting worse. ``per_task`` (the default) is adaptd's gate.
    mode: Literal["per_task", "mean"] = "per_task"
    mean_tolerance: float = Field(0.02, ge=0.0)


# The groups an operator sets through ``Settings`` (``ADAPTD_TRAIN``, ``ADAPTD_EVAL``,
# ``ADAPTD_DATA``, ``ADAPTD_GATE``: JSON objects of overrides; the policy engine's own group
# is ``ADAPTD_POLICY``, a ``policies.PolicyConfig``).
CONFIG_GROUPS: dict[str, type[_Model]] = {
    "train": TrainConfig, "eval": EvalConfig, "data": DataConfig, "gate": GateConfig}
