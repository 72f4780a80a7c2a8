"""TrainBatch: rows collated to right-padded tensors, shifted so position t scores token t+1."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from erl_mega.algo.rows import TrainRow


@dataclass(frozen=True)
class TrainBatch:
    """Shapes: B rows × T positions. Pads sit after each row's tokens and carry mask 0."""

    input_ids: Tensor  # [B, T] long
    targets: Tensor  # [B, T] long: input shifted left by one
    loss_mask: Tensor  # [B, T] float: 1 where the target token was sampled by the policy
    advantages: Tensor  # [B, T] float: the row's advantage on every position (policy rows)
    rollout_logprobs: Tensor  # [B, T] float: the engine's log-prob of each target token (0 off-mask)
    behaviour_known: Tensor  # [B] bool: rollout_logprobs are the sampling policy's for this very context
    distill_weight: Tensor  # [B] float: > 0 only on distillation rows
    is_distill: Tensor  # [B] bool
    versions: tuple[int, ...]  # weight version that sampled each row
    temperatures: Tensor  # [B] float: the temperature each row's sampled tokens were drawn at
    lengths: Tensor  # [B] long: positions of each row before its padding

    @property
    def num_rows(self) -> int:
        return self.input_ids.shape[0]


def collate(rows: list[TrainRow], pad_id: int) -> TrainBatch:
    """Stack rows into a TrainBatch; the ids are exactly the sampled ones, never re-tokenised."""
    if not rows:
        raise ValueError("collate() got no rows")
    width = max(len(r.trajectory.token_ids()) for r in rows) - 1
    b = len(rows)
    ids = torch.full((b, width + 1), pad_id, dtype=torch.long)
    mask = torch.zeros(b, width + 1)
    logp = torch.zeros(b, width + 1)
    for i, row in enumerate(rows):
        tr = row.trajectory
        n = len(tr.token_ids())
        ids[i, :n] = torch.tensor(tr.token_ids())
        mask[i, :n] = torch.tensor(tr.loss_mask(), dtype=torch.float)
        logp[i, :n] = torch.tensor(tr.rollout_logprobs())
    adv = torch.tensor([r.advantage for r in rows])[:, None].expand(b, width).contiguous()
    return TrainBatch(
        input_ids=ids[:, :-1],
        targets=ids[:, 1:],
        loss_mask=mask[:, 1:],
        advantages=adv,
        rollout_logprobs=logp[:, 1:],
        behaviour_known=torch.tensor([r.trajectory.behaviour_known for r in rows]),
        distill_weight=torch.tensor([r.weight if r.kind == "distill" else 0.0 for r in rows]),
        is_distill=torch.tensor([r.kind == "distill" for r in rows]),
        versions=tuple(r.trajectory.weight_version for r in rows),
        temperatures=torch.tensor([r.trajectory.temperature for r in rows], dtype=torch.float32),
        lengths=torch.tensor([len(r.trajectory.token_ids()) - 1 for r in rows]),
    )
