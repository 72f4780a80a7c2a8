"""The entry points the trainer calls: the Triton kernel for CUDA tensors, the PyTorch reference otherwise.

Triton modules are imported only on the CUDA path, so CPU runs need neither a GPU nor triton.
"""

from __future__ import annotations

import torch.distributed as dist
from torch import Tensor

from erl_mega.kernels.advantages import group_advantages as group_advantages_reference
from erl_mega.kernels.losses import PolicyLossConfig
from erl_mega.kernels.reference import (
    fused_policy_loss_reference,
    fused_token_logprobs_reference,
    packed_distill_loss_reference,
)
from erl_mega.kernels.results import PolicyLossOutput


def fused_policy_loss(
    hidden: Tensor,
    weight: Tensor,
    targets: Tensor,
    old_logp: Tensor | None,
    advantages: Tensor,
    mask: Tensor,
    cfg: PolicyLossConfig,
    *,
    ref_logp: Tensor | None = None,
    rollout_logp: Tensor | None = None,
    logp_coef: Tensor | None = None,
    cu_seqlens: Tensor | None = None,
    temperature: float = 1.0,
    group: dist.ProcessGroup | None = None,
) -> PolicyLossOutput:
    """PPO-clip policy loss of `erl_mega.kernels.losses.policy_loss` straight from the lm-head input.

    hidden [B, T, H] padded (each row one sequence; cu_seqlens None) or [N, H] packed with
    cu_seqlens [S + 1]; weight [V, H], or this rank's vocab shard [V / tp, H] with `group` (then the
    loss and d(hidden) are the unsharded ones on every rank: do not also all-reduce d(hidden));
    targets (int), old_logp, advantages, mask (float) and the optional ref_logp / rollout_logp
    are [B, T] or [N], position t scoring the token at t. Targets must be valid ids at masked
    positions too. old_logp None: on-policy (old = the current log-probs, detached, ratio 1).
    logp_coef [B, T] or [N] adds sum(logp_coef * logp) to the loss, e.g. a distillation term folded
    into the same pass (-weight per token); metrics["policy_loss"] excludes it.
    """
    if hidden.is_cuda:
        from erl_mega.kernels.fused_linear_logprob import fused_policy_loss_triton as impl
    else:
        impl = fused_policy_loss_reference
    return impl(
        hidden, weight, targets, old_logp, advantages, mask, cfg, ref_logp=ref_logp, rollout_logp=rollout_logp,
        logp_coef=logp_coef, cu_seqlens=cu_seqlens, temperature=temperature, group=group,
    )


def fused_token_logprobs(
    hidden: Tensor,
    weight: Tensor,
    targets: Tensor,
    *,
    temperature: float = 1.0,
    group: dist.ProcessGroup | None = None,
) -> tuple[Tensor, Tensor]:
    """Per-token log-prob and entropy (no gradient), each shaped like targets, from hidden [..., H]."""
    if hidden.is_cuda:
        from erl_mega.kernels.fused_linear_logprob import fused_token_logprobs_triton

        return fused_token_logprobs_triton(hidden, weight, targets, temperature=temperature, group=group)
    return fused_token_logprobs_reference(hidden, weight, targets, temperature=temperature, group=group)


def packed_distill_loss(
    hidden: Tensor,
    weight: Tensor,
    targets: Tensor,
    mask: Tensor,
    cu_seqlens: Tensor,
    seq_weights: Tensor,
    aggregation: str = "seq-mean-token-mean",
    *,
    group: dist.ProcessGroup | None = None,
) -> Tensor:
    """Weighted distillation CE of packed sequences: hidden [N, H], cu_seqlens [S + 1], seq_weights [S]."""
    if hidden.is_cuda:
        from erl_mega.kernels.packed_distill_loss import packed_distill_loss_triton as impl
    else:
        impl = packed_distill_loss_reference
    return impl(hidden, weight, targets, mask, cu_seqlens, seq_weights, aggregation, group=group)


def group_advantages(rewards: Tensor, group_ids: Tensor, mode: str = "grpo") -> Tensor:
    """Group-normalised advantages [N] from rewards [N] and integer group ids [N] ("grpo" or "drgrpo")."""
    if rewards.is_cuda:
        from erl_mega.kernels.group_advantages import group_advantages_triton

        return group_advantages_triton(rewards, group_ids, mode)
    return group_advantages_reference(rewards, group_ids, mode)
