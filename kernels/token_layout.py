"""Token layouts the kernels accept (padded [B, T] or packed [N] with cu_seqlens) and aggregation weights."""

from __future__ import annotations

import torch
from torch import Tensor

from erl_mega.kernels.losses import AGGREGATIONS


def padded_cu_seqlens(batch: int, seq_len: int, device: torch.device) -> Tensor:
    """Sequence boundaries [B + 1] of a padded [B, T] batch flattened row-major into [B·T] tokens."""
    return torch.arange(batch + 1, device=device, dtype=torch.int64) * seq_len


def check_cu_seqlens(cu_seqlens: Tensor) -> None:
    """Raise unless cu_seqlens is a 1-D integer tensor [S + 1] with S >= 1 (contents are trusted)."""
    if cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2 or cu_seqlens.is_floating_point():
        raise ValueError(f"cu_seqlens must be a 1-D integer tensor [S + 1] with S >= 1, got {tuple(cu_seqlens.shape)}")


def sequence_ids(cu_seqlens: Tensor, num_tokens: int) -> Tensor:
    """Index of the sequence each packed token belongs to: cu_seqlens [S + 1] -> [N] int64."""
    positions = torch.arange(num_tokens, device=cu_seqlens.device, dtype=cu_seqlens.dtype)
    return torch.searchsorted(cu_seqlens[1:], positions, right=True)


def aggregation_weights(mask: Tensor, cu_seqlens: Tensor, aggregation: str) -> Tensor:
    """Per-token weight w [N] such that `aggregate(values, mask, aggregation) == (w * values).sum()`.

    mask [N] float over packed tokens, cu_seqlens [S + 1]; a sequence whose mask sums to zero does
    not count, exactly as `erl_mega.kernels.losses.aggregate` drops empty rows.
    """
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"loss aggregation {aggregation!r}; choose one of {sorted(AGGREGATIONS)}")
    mask = mask.float()
    if aggregation == "token-mean":
        return mask / mask.sum().clamp_min(1.0)
    seq = sequence_ids(cu_seqlens, mask.numel())
    counts = torch.zeros(cu_seqlens.numel() - 1, device=mask.device).index_add_(0, seq, mask)
    rows = counts > 0
    weights = mask * rows[seq] / rows.sum().clamp_min(1)
    if aggregation == "seq-mean-token-mean":
        weights = weights / torch.where(rows, counts, 1.0)[seq]
    return weights


def unpack_to_padded(values: Tensor, cu_seqlens: Tensor) -> Tensor:
    """Packed per-token values [N, ...] -> zero-padded [S, T_max, ...] (differentiable; syncs the host)."""
    lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).tolist()
    return torch.nn.utils.rnn.pad_sequence(list(values.split(lengths)), batch_first=True)


def flatten_tokens(
    hidden: Tensor, cu_seqlens: Tensor | None, **per_token: Tensor | None
) -> tuple[Tensor, Tensor, dict[str, Tensor | None]]:
    """Bring a padded [B, T, H] batch (rows are sequences) or a packed [N, H] one to packed form.

    Returns hidden [N, H], cu_seqlens [S + 1] and each per-token tensor flattened to [N]; a per-token
    tensor must have hidden's leading shape ([B, T] or [N]).
    """
    if hidden.dim() == 3:
        if cu_seqlens is not None:
            raise ValueError("cu_seqlens is for packed hidden [N, H]; a padded [B, T, H] batch must not pass it")
        cu_seqlens = padded_cu_seqlens(hidden.shape[0], hidden.shape[1], hidden.device)
    elif hidden.dim() == 2:
        if cu_seqlens is None:
            raise ValueError("packed hidden [N, H] needs cu_seqlens [S + 1]")
        check_cu_seqlens(cu_seqlens)
    else:
        raise ValueError(f"hidden must be padded [B, T, H] or packed [N, H], got {tuple(hidden.shape)}")
    shape = hidden.shape[:-1]
    for name, value in per_token.items():
        if value is not None and value.shape != shape:
            raise ValueError(f"{name} has shape {tuple(value.shape)}; expected {tuple(shape)} to match hidden")
    flat = {name: None if value is None else value.reshape(-1) for name, value in per_token.items()}
    return hidden.reshape(-1, hidden.shape[-1]), cu_seqlens, flat
