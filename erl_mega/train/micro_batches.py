"""A TrainBatch cut into PPO mini-batches and this data-parallel rank's micro-batches, padded or packed.

Losses are exact global means over a mini-batch: a micro-batch's loss is its own aggregate scaled by
the share of the mini-batch's loss units (tokens or rows, by aggregation) it holds, so shares summed
over every micro-batch on every data-parallel rank give the loss of the whole mini-batch.
The lm-head sees only tokens that carry a loss: each micro-batch lists where they sit in the model's
token layout (`loss_index`) and holds its per-token tensors for those tokens alone.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from megatron.core.packed_seq_params import PackedSeqParams
from torch import Tensor

from erl_mega.train.batch import TrainBatch
from erl_mega.train.packing import pack_sequences


@dataclass(frozen=True)
class StepLogprobs:
    """Per-token log-probs [B, T] computed for a TrainBatch before its updates (None: not needed)."""

    old: Tensor | None = None  # the behaviour policy's; None: on-policy, the current one detached
    ref: Tensor | None = None  # the frozen reference policy's (KL term)

    def rows(self, rows: Tensor) -> StepLogprobs:
        """The same log-probs for a subset of the batch's rows."""
        return StepLogprobs(*(None if t is None else t[rows] for t in (self.old, self.ref)))


@dataclass(frozen=True)
class ModelInputs:
    """One micro-batch: model inputs padded [b, s] or packed [1, n], and its k loss tokens' tensors."""

    input_ids: Tensor  # [b, s] or [1, n] long
    position_ids: Tensor  # like input_ids; packed positions restart at 0 in every sequence
    cu_seqlens: Tensor | None  # [S + 1] int32 when packed (S sequences), None when padded (S = b)
    loss_index: Tensor  # [k] long: each loss token's place in the flattened [b * s] or [n] layout
    loss_cu_seqlens: Tensor  # [S + 1] long: the loss tokens of each sequence (aggregation boundaries)
    batch_rows: Tensor  # [k] long: the TrainBatch row of each loss token
    batch_cols: Tensor  # [k] long: its position in that row
    targets: Tensor  # [k] long
    policy_mask: Tensor  # [k] float
    distill_mask: Tensor  # [k] float
    advantages: Tensor  # [k] float
    rollout_logprobs: Tensor  # [k] float
    behaviour_known: Tensor  # [k] bool: the rollout log-prob is the behaviour policy's (not a re-contextualised row)
    inv_temperature: Tensor  # [k] float: 1 / the temperature the token's row was sampled at
    old_logprobs: Tensor | None  # [k] float; None: on-policy (the current log-probs, detached)
    ref_logprobs: Tensor | None  # [k] float
    distill_weight: Tensor  # [S] float
    policy_share: float  # this micro-batch's share of the mini-batch's policy-loss units
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

    def to(self, device: torch.device | str) -> ModelInputs:
        """Every tensor on `device` (micro-batches are built on the host; the model may live on a GPU)."""
        moved = {
            f.name: value.to(device, non_blocking=True)
            for f in dataclasses.fields(self)
            if isinstance(value := getattr(self, f.name), Tensor)
        }
        return dataclasses.replace(self, **moved)


def loss_masks(batch: TrainBatch) -> tuple[Tensor, Tensor]:
    """Policy and distillation loss masks [B, T]: the loss mask split by row kind."""
    return batch.loss_mask * (~batch.is_distill)[:, None], batch.loss_mask * batch.is_distill[:, None]


def loss_units(mask: Tensor, aggregation: str) -> float:
    """How many units a mask holds for an aggregation (tokens, or rows with any token)."""
    if aggregation == "token-mean":
        return float(mask.sum())
    return float((mask.sum(-1) > 0).sum())


def select_rows(batch: TrainBatch, rows: Tensor) -> TrainBatch:
    """The TrainBatch of `rows` [r] only (a PPO mini-batch)."""
    picked = {
        f.name: value[rows] if isinstance(value := getattr(batch, f.name), Tensor) else value
        for f in dataclasses.fields(batch)
    }
    picked["versions"] = tuple(batch.versions[i] for i in rows.tolist())
    return TrainBatch(**picked)


def mini_batch_rows(num_rows: int, mini_batch_size: int | None, seed: int, step: int, epoch: int) -> list[Tensor]:
    """The rows of each PPO mini-batch of one epoch: all rows in order when one mini-batch holds them,
    else a permutation drawn from (seed, step, epoch) cut into mini-batches (the last may be smaller)."""
    size = mini_batch_size or num_rows
    if size >= num_rows:
        return [torch.arange(num_rows)]  # one update does not depend on row order
    key = (seed * 1_000_003 + step) * 1_009 + epoch
    order = torch.randperm(num_rows, generator=torch.Generator().manual_seed(key))
    return list(order.split(size))


def padded_micro_batches(
    batch: TrainBatch, rows_per_micro_batch: int, dp_rank: int, dp_size: int, aggregations: tuple[str, str],
    logprobs: StepLogprobs = StepLogprobs(),
) -> list[ModelInputs]:
    """This rank's rows (every dp_size-th), `rows_per_micro_batch` at a time, trimmed to their longest row."""
    _check_rows(batch, dp_size)
    rows = torch.arange(dp_rank, batch.num_rows, dp_size)
    return [
        _padded(batch, rows[i : i + rows_per_micro_batch], aggregations, logprobs)
        for i in range(0, len(rows), rows_per_micro_batch)
    ]


def packed_micro_batches(
    batch: TrainBatch, max_tokens: int, dp_rank: int, dp_size: int, aggregations: tuple[str, str],
    logprobs: StepLogprobs = StepLogprobs(),
) -> list[ModelInputs]:
    """This rank's sequences packed into rows of at most `max_tokens` (balanced across ranks by `pack_sequences`)."""
    _check_rows(batch, dp_size)
    plan = pack_sequences(batch.lengths.numpy(), max_tokens=max_tokens, dp_size=dp_size)
    return [
        _packed(batch, torch.from_numpy(mb.indices), aggregations, logprobs)
        for mb in plan.micro_batches(dp_rank)
        if len(mb.indices)
    ]


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


def _loss_tokens(
    batch: TrainBatch, rows: Tensor, aggregations: tuple[str, str], logprobs: StepLogprobs, layout: Tensor
) -> dict:
    """The loss tokens of `rows`: where they sit in the model layout ([rows, width] -> flat index) and their tensors."""
    live = batch.loss_mask[rows, : layout.shape[1]] > 0
    r, c = live.nonzero(as_tuple=True)  # row-major: sequence by sequence, in order
    cu = torch.zeros(len(rows) + 1, dtype=torch.long)
    cu[1:] = live.sum(1).cumsum(0)
    batch_rows = rows[r]
    policy, distill = (mask[batch_rows, c] for mask in loss_masks(batch))
    policy_share, distill_share = _shares(batch, rows, aggregations)
    old, ref = (None if t is None else t[batch_rows, c] for t in (logprobs.old, logprobs.ref))
    return dict(
        loss_index=layout[r, c],
        loss_cu_seqlens=cu,
        batch_rows=batch_rows,
        batch_cols=c,
        targets=batch.targets[batch_rows, c],
        policy_mask=policy,
        distill_mask=distill,
        advantages=batch.advantages[batch_rows, c],
        rollout_logprobs=batch.rollout_logprobs[batch_rows, c],
        behaviour_known=batch.behaviour_known[batch_rows],
        inv_temperature=1.0 / batch.temperatures[batch_rows].float(),
        old_logprobs=old,
        ref_logprobs=ref,
        distill_weight=batch.distill_weight[rows],
        policy_share=policy_share,
        distill_share=distill_share,
    )


def _padded(batch: TrainBatch, rows: Tensor, aggregations: tuple[str, str], logprobs: StepLogprobs) -> ModelInputs:
    width = int(batch.lengths[rows].max())
    ids = batch.input_ids[rows, :width]
    layout = torch.arange(ids.numel()).view_as(ids)
    return ModelInputs(
        input_ids=ids,
        position_ids=torch.arange(width).expand_as(ids),
        cu_seqlens=None,
        **_loss_tokens(batch, rows, aggregations, logprobs, layout),
    )


def _packed(batch: TrainBatch, rows: Tensor, aggregations: tuple[str, str], logprobs: StepLogprobs) -> ModelInputs:
    lengths = batch.lengths[rows]
    cu = torch.zeros(len(rows) + 1, dtype=torch.int32)
    cu[1:] = lengths.cumsum(0)
    width = int(lengths.max())
    in_row = torch.arange(width)[None] < lengths[:, None]
    layout = torch.where(in_row, cu[:-1, None].long() + torch.arange(width), -1)  # [rows, width] -> packed index
    ids = batch.input_ids[rows, :width][in_row]
    return ModelInputs(
        input_ids=ids[None],
        position_ids=torch.arange(width).expand(len(rows), width)[in_row][None],
        cu_seqlens=cu,
        **_loss_tokens(batch, rows, aggregations, logprobs, layout),
    )
