"""Packed-sequence distillation loss (Triton): weighted cross-entropy from hidden × lm-head, no [N, V] logits.

Same value as `erl_mega.kernels.losses.distill_loss` on the padded form of the packed sequences; the
vocab-wide work is `erl_mega.kernels.chunked_lm_head`, and d(loss)/d(logp) of each token is known up front.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

from erl_mega.kernels.chunked_lm_head import DEFAULT_CHUNK_ROWS, lm_head_pass, scaled_saved_grads
from erl_mega.kernels.token_layout import aggregation_weights, check_cu_seqlens, sequence_ids


class _DistillLossFunction(torch.autograd.Function):
    """loss(hidden, weight) = sum_t coef_t · logp_t; the gradient is formed in the forward."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, coef, group, chunk_rows, grad_enabled):
        result = lm_head_pass(
            hidden,
            weight,
            targets,
            coef_fn=lambda start, end, logp, entropy: (coef[start:end], None),
            need_grad_hidden=grad_enabled and ctx.needs_input_grad[0],  # needs_input_grad ignores no_grad
            need_grad_weight=grad_enabled and ctx.needs_input_grad[1],
            group=group,
            chunk_rows=chunk_rows,
        )
        ctx.save_for_backward(result.grad_hidden, result.grad_weight)
        return (coef * result.logp).sum()

    @staticmethod
    def backward(ctx, grad_loss):
        return scaled_saved_grads(ctx, grad_loss, 7)


def packed_distill_loss_triton(
    hidden: Tensor,
    weight: Tensor,
    targets: Tensor,
    mask: Tensor,
    cu_seqlens: Tensor,
    seq_weights: Tensor,
    aggregation: str = "seq-mean-token-mean",
    *,
    group: dist.ProcessGroup | None = None,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
) -> Tensor:
    """Weighted SFT loss of packed sequences: aggregate(-logp(target) · seq_weight, mask).

    hidden [N, H], weight [V, H] (or this rank's [V / tp, H] shard with `group`), targets [N] int,
    mask [N] float, cu_seqlens [S + 1], seq_weights [S]; "seq-mean-token-mean" is the mean per
    sequence, "token-mean" the mean per token.
    """
    check_cu_seqlens(cu_seqlens)
    if hidden.dim() != 2 or targets.shape != hidden.shape[:1] or mask.shape != targets.shape:
        raise ValueError(
            f"hidden {tuple(hidden.shape)}, targets {tuple(targets.shape)}, mask {tuple(mask.shape)}: "
            "need [N, H], [N], [N]"
        )
    if seq_weights.shape != (cu_seqlens.numel() - 1,):
        raise ValueError(f"seq_weights {tuple(seq_weights.shape)} must be [S] = [{cu_seqlens.numel() - 1}]")
    seq = sequence_ids(cu_seqlens, targets.numel())
    coef = -aggregation_weights(mask, cu_seqlens, aggregation) * seq_weights.float()[seq]  # dL/dlogp [N]
    return _DistillLossFunction.apply(
        hidden, weight, targets.contiguous(), coef, group, chunk_rows, torch.is_grad_enabled()
    )
