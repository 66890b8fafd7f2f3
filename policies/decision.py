"""Inputs to and outputs of the decision engine."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Self

__all__ = ["ACTIONS", "Action", "Decision", "Status", "TaskSignals"]

Action = Literal["rebalance", "retrain", "fork", "rollback", "merge", "hold"]
ACTIONS: tuple[Action, ...] = ("rebalance", "retrain", "fork", "rollback", "merge", "hold")
Status = Literal["applied", "proposed"]


@dataclass(frozen=True)
class TaskSignals:
    """Per-task numbers the engine cannot derive from the feedback stream itself.

    Acceptance, degradation and crosstalk live in the policy state (fed by ``observe``);
    regressions come in through ``record_eval``; affinity through ``decide(affinity=...)``.
    """

    new_examples: int = 0  # buffered training examples not yet used by a retrain
    data_size: int | None = None  # total training examples (None: keep the known size)


@dataclass(frozen=True)
class Decision:
    """One policy decision, with the reason and the numbers behind it.

    ``adapter`` is the adapter acted on: for ``fork`` the new isolated adapter (the old one
    is ``signals["from_adapter"]``), for ``merge`` the adapter the task joins, for
    ``rollback`` the adapter whose version goes back to ``signals["to_version"]``.
    ``train`` lists adapters whose training job must be enqueued now (empty for proposals,
    holds and rollbacks); pass ``signals["targeted"]`` back to ``record_eval``.

    A decision about a whole adapter (a first version, a retrain after a base rebuild, a
    baseline policy's schedule: ``policies.schedule``) has ``task`` ``""`` and carries the
    parameters of the one training job it starts in ``job``; the engine's decisions leave
    ``job`` None and the job takes the adapter's current tasks and ratios.
    """

    seq: int
    at: float
    action: Action
    task: str
    adapter: str
    reason: str
    signals: dict[str, Any] = field(default_factory=dict)
    status: Status = "applied"
    ratios: dict[str, float] | None = None
    ratio_version: int | None = None
    train: tuple[str, ...] = ()
    job: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "seq": self.seq,
            "at": self.at,
            "action": self.action,
            "task": self.task,
            "adapter": self.adapter,
            "reason": self.reason,
            "signals": dict(self.signals),
            "status": self.status,
            "ratios": None if self.ratios is None else dict(self.ratios),
            "ratio_version": self.ratio_version,
            "train": list(self.train),
        }
        if self.job is not None:
            out["job"] = dict(self.job)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        ratios = data.get("ratios")
        rv = data.get("ratio_version")
        return cls(
            seq=int(data["seq"]),
            at=float(data["at"]),
            action=data["action"],
            task=str(data["task"]),
            adapter=str(data["adapter"]),
            reason=str(data["reason"]),
            signals=dict(data.get("signals", {})),
            status=data.get("status", "applied"),
            ratios=None if ratios is None else {str(k): float(v) for k, v in ratios.items()},
            ratio_version=None if rv is None else int(rv),
            train=tuple(str(a) for a in data.get("train", ())),
            job=None if data.get("job") is None else dict(data["job"]),
        )
