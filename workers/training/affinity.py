"""TAG-style inter-task affinity (Fifty et al. 2021, "Efficiently Identifying Task Groupings").

During shared training, take a lookahead step on task i's loss alone and see how task j's loss
on a fixed probe batch changes: ``affinity[i][j] = 1 - L_j(after step on i) / L_j(before)``.
Positive: training i helps j; negative: i hurts j. The lookahead is a sign-gradient step of
the current learning rate on the LoRA weights (what Adam's first update looks like), and the
weights are restored afterwards, so the run itself is unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from workers.training.loss import batch_loss
from workers.training.packing import Batch


def measure(
    model: torch.nn.Module, probes: Mapping[str, Batch], *, lr: float
) -> dict[str, dict[str, float]]:
    params = [p for p in model.parameters() if p.requires_grad]
    was_training = model.training
    model.eval()  # no dropout noise in the comparison
    with torch.no_grad():
        before = {t: float(batch_loss(model, b, per_task=False).ce) for t, b in probes.items()}
    out: dict[str, dict[str, float]] = {}
    for i, batch_i in probes.items():
        loss_i = batch_loss(model, batch_i, per_task=False).ce
        grads = torch.autograd.grad(loss_i, params, allow_unused=True)
        saved = [p.detach().clone() for p in params]
        with torch.no_grad():
            for p, g in zip(params, grads, strict=True):
                if g is not None:
                    p.sub_(lr * torch.sign(g))
            out[i] = {}
            for j, batch_j in probes.items():
                after = float(batch_loss(model, batch_j, per_task=False).ce)
                out[i][j] = 1.0 - after / before[j] if before[j] > 0 else 0.0
            for p, s in zip(params, saved, strict=True):
                p.copy_(s)
    model.train(was_training)
    return out


def average(measurements: list[dict[str, dict[str, float]]]) -> dict[str, dict[str, float]]:
    """Element-wise mean of several affinity matrices."""
    if not measurements:
        return {}
    out: dict[str, dict[str, float]] = {}
    for i in measurements[0]:
        out[i] = {}
        for j in measurements[0][i]:
            vals = [m[i][j] for m in measurements if i in m and j in m[i]]
            out[i][j] = round(sum(vals) / len(vals), 6)
    return out
