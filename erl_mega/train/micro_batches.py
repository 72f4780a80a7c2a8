"""A TrainBatch cut into this data-parallel rank's micro-batches, padded or packed, each with its loss share.

Losses are exact global means: a micro-batch's loss is its own aggregate scaled by the share of
the batch's loss units (tokens or rows, by aggregation) it holds, so shares summed over every
micro-batch on every data-parallel rank give the loss of the whole batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from megatron.core.packed_seq_params import PackedSeqParams
from torch import Tensor

from erl_mega.train.batch import TrainBatch
from erl_mega.train.packing import pack_sequences


@dataclass(frozen=True)
class ModelInputs:
    """One micro-batch as the model and the loss take it: padded rows [b, s] or one packed row [1, n]."""

    input_ids: Tensor  # [b, s] or [1, n] long
    position_ids: Tensor  # like input_ids; packed positions restart at 0 in every sequence
    targets: Tensor  # [b, s] or [n] long
    policy_mask: Tensor  # like targets, float
    distill_mask: Tensor  # like targets, float
    advantages: Tensor  # like targets, float
    rollout_logprobs: Tensor  # like targets, float
    distill_weight: Tensor  # [sequences] float
    cu_seqlens: Tensor | None  # [sequences + 1] int32 when packed
    policy_share: float  # this micro-batch's share of the batch's policy-loss units
    distill_share: float

    @property
    def packed_seq_params(self) -> PackedSeqParams | None:
        """megatron's THD description of a packed micro-batch (None when padded)."""
        if self.cu_seqlens is None:
            return None
        longest = int((self.cu_seqlens[1:] - self.cu_seqlens[:-1]).max())
        return PackedSeqParams(
            qkv_format="thd",
            cu_seqlens_q=self.cu_seqlens,
            cu_seqlens_kv=self.cu_seqlens,
            max_seqlen_q=longest,
            max_seqlen_kv=longest,
        )


def loss_masks(batch: TrainBatch) -> tuple[Tensor, Tensor]:
    """Policy and distillation loss masks [B, T]: the loss mask split by row kind."""
    return batch.loss_mask * (~batch.is_distill)[:, None], batch.loss_mask * batch.is_distill[:, None]


def loss_units(mask: Tensor, aggregation: str) -> float:
    """How many units a mask holds for an aggregation (tokens, or rows with any token)."""
    if aggregation == "token-mean":
        return float(mask.sum())
    return float((mask.sum(-1) > 0).sum())


def padded_micro_batches(
    batch: TrainBatch, rows_per_micro_batch: int, dp_rank: int, dp_size: int, aggregations: tuple[str, str]
) -> list[ModelInputs]:
    """This rank's rows (every dp_size-th), `rows_per_micro_batch` at a time, trimmed to their longest row."""
    _check_rows(batch, dp_size)
    rows = torch.arange(dp_rank, batch.num_rows, dp_size)
    return [_padded(batch, rows[i : i + rows_per_micro_batch], aggregations) for i in range(0, len(rows), rows_per_micro_batch)]


def packed_micro_batches(
    batch: TrainBatch, max_tokens: int, dp_rank: int, dp_size: int, aggregations: tuple[str, str]
) -> list[ModelInputs]:
    """This rank's sequences packed into rows of at most `max_tokens` (balanced across ranks by `pack_sequences`)."""
    _check_rows(batch, dp_size)
    plan = pack_sequences(batch.lengths.numpy(), max_tokens=max_tokens, dp_size=dp_size)
    return [_packed(batch, torch.from_numpy(mb.indices), aggregations) for mb in plan.micro_batches(dp_rank) if len(mb.indices)]


def _check_rows(batch: TrainBatch, dp_size: int) -> None:
    if batch.num_rows < dp_size:
        raise ValueError(f"the batch has {batch.num_rows} rows; data parallelism needs at least dp={dp_size}")


def _shares(batch: TrainBatch, rows: Tensor, aggregations: tuple[str, str]) -> tuple[float, float]:
    """The rows' shares of the batch's policy and distillation loss units."""
    shares = []
    for mask, aggregation in zip(loss_masks(batch), aggregations):
        total = loss_units(mask, aggregation)
        shares.append(loss_units(mask[rows], aggregation) / total if total else 0.0)
    return shares[0], shares[1]


def _padded(batch: TrainBatch, rows: Tensor, aggregations: tuple[str, str]) -> ModelInputs:
    width = int(batch.lengths[rows].max())
    policy, distill = (mask[rows, :width] for mask in loss_masks(batch))
    ids = batch.input_ids[rows, :width]
    policy_share, distill_share = _shares(batch, rows, aggregations)
    return ModelInputs(
        input_ids=ids,
        position_ids=torch.arange(width).expand_as(ids),
        targets=batch.targets[rows, :width],
        policy_mask=policy,
        distill_mask=distill,
        advantages=batch.advantages[rows, :width],
        rollout_logprobs=batch.rollout_logprobs[rows, :width],
        distill_weight=batch.distill_weight[rows],
        cu_seqlens=None,
        policy_share=policy_share,
        distill_share=distill_share,
    )


def _packed(batch: TrainBatch, rows: Tensor, aggregations: tuple[str, str]) -> ModelInputs:
    lengths = batch.lengths[rows].tolist()
    policy, distill = loss_masks(batch)

    def cat(values: Tensor) -> Tensor:
        return torch.cat([values[row, :n] for row, n in zip(rows.tolist(), lengths)])

    cu = torch.zeros(len(lengths) + 1, dtype=torch.int32)
    cu[1:] = torch.tensor(lengths).cumsum(0)
    policy_share, distill_share = _shares(batch, rows, aggregations)
    return ModelInputs(
        input_ids=cat(batch.input_ids)[None],
        position_ids=torch.cat([torch.arange(n) for n in lengths])[None],
        targets=cat(batch.targets),
        policy_mask=cat(policy),
        distill_mask=cat(distill),
        advantages=cat(batch.advantages),
        rollout_logprobs=cat(batch.rollout_logprobs),
        distill_weight=batch.distill_weight[rows],
        cu_seqlens=cu,
        policy_share=policy_share,
        distill_share=distill_share,
    )
