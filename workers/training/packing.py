"""Batches without wasted compute: sequence packing (default) or length-grouped padding.

Packing puts several examples into one row and restarts ``position_ids`` at 0 for each; with
``attention_mask=None`` transformers builds a block-diagonal causal mask from the position
ids (``masking_utils.find_packed_sequence_indices``), so examples never attend to each other.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from workers.training.encode import Seq

IGNORE = -100


@dataclass
class Batch:
    input_ids: torch.Tensor  # [rows, length]
    position_ids: torch.Tensor  # [rows, length]
    attention_mask: torch.Tensor | None  # None when packed
    labels: torch.Tensor  # [rows, length], IGNORE where no target
    task_ids: torch.Tensor  # [rows, length], task of each target token (-1 general, -2 none)
    negative: torch.Tensor  # [rows, length] bool, unlikelihood targets
    n_tokens: int  # real (non-pad) tokens
    # Packed: the token count of each example in each row, in order (packed_attention).
    segments: list[list[int]] | None = None

    def to(self, device: torch.device) -> Batch:
        return Batch(
            input_ids=self.input_ids.to(device),
            position_ids=self.position_ids.to(device),
            attention_mask=None if self.attention_mask is None else self.attention_mask.to(device),
            labels=self.labels.to(device),
            task_ids=self.task_ids.to(device),
            negative=self.negative.to(device),
            n_tokens=self.n_tokens,
            segments=self.segments,
        )


def _rows_packed(seqs: list[Seq], pack_len: int | None) -> list[list[Seq]]:
    """First-fit decreasing bin packing (a sequence longer than a row gets its own row);
    ``pack_len=None``: one row holding every sequence."""
    if pack_len is None:
        return [sorted(seqs, key=lambda s: len(s.ids), reverse=True)]
    rows: list[list[Seq]] = []
    room: list[int] = []
    for seq in sorted(seqs, key=lambda s: len(s.ids), reverse=True):
        for i, free in enumerate(room):
            if len(seq.ids) <= free:
                rows[i].append(seq)
                room[i] -= len(seq.ids)
                break
        else:
            rows.append([seq])
            room.append(max(pack_len - len(seq.ids), 0))
    return rows


def make_batch(
    seqs: list[Seq], *, pad_id: int, pack_len: int | None, packing: bool = True
) -> Batch:
    """Build tensors for ``seqs``; rows are trimmed to the longest row, not to ``pack_len``."""
    if packing:
        rows = _rows_packed(seqs, pack_len)
    else:
        # Length grouping: sorted by length, one example per row, so padding is minimal.
        rows = [[s] for s in sorted(seqs, key=lambda s: len(s.ids), reverse=True)]
    width = max(sum(len(s.ids) for s in row) for row in rows)
    # Plain lists first, one tensor per field at the end: per-example tensor writes cost more
    # than the model's forward for tiny models.
    ids_l, pos_l, lab_l, task_l, neg_l, att_l = [], [], [], [], [], []
    for row in rows:
        ids: list[int] = []
        pos: list[int] = []
        lab: list[int] = []
        tsk: list[int] = []
        neg: list[bool] = []
        for seq in row:
            k, start = len(seq.ids), seq.start
            ids += seq.ids
            pos += range(k)
            n_t = max(k - start, 0)
            targets = seq.ids[start:]
            if seq.negative:
                # A rejected output is only an unlikelihood target, and only where its mask is
                # on; elsewhere it is not trained on at all.
                mask = seq.ul_mask or [True] * n_t
                targets = [t if m else IGNORE for t, m in zip(targets, mask, strict=True)]
                neg += [False] * min(start, k) + list(mask)
            else:
                neg += [False] * k
            # Targets: response tokens (index >= start); the shift happens in the loss.
            lab += [IGNORE] * min(start, k) + targets
            tsk += [-2] * min(start, k) + [seq.task] * n_t
        used = len(ids)
        att_l.append([1] * used + [0] * (width - used))
        ids_l.append(ids + [pad_id] * (width - used))
        # Trailing padding restarts positions so it forms its own (ignored) packed segment.
        pos_l.append(pos + list(range(width - used)))
        lab_l.append(lab + [IGNORE] * (width - used))
        task_l.append(tsk + [-2] * (width - used))
        neg_l.append(neg + [False] * (width - used))
    attention = torch.tensor(att_l, dtype=torch.long)
    return Batch(
        input_ids=torch.tensor(ids_l, dtype=torch.long),
        position_ids=torch.tensor(pos_l, dtype=torch.long),
        attention_mask=None if packing else attention,
        labels=torch.tensor(lab_l, dtype=torch.long),
        task_ids=torch.tensor(task_l, dtype=torch.long),
        negative=torch.tensor(neg_l, dtype=torch.bool),
        n_tokens=int(attention.sum()),
        segments=[[len(s.ids) for s in row] for row in rows] if packing else None,
    )
