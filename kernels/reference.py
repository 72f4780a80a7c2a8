"""PyTorch reference paths of the fused kernels: materialise the logits and call `erl_mega.algo`.

The CPU path of the trainer and the baseline the tests and benchmarks compare the Triton kernels
against. Vocab-parallel: the weight shards are gathered, so every rank computes the unsharded loss.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

from erl_mega.kernels.losses import PolicyLossConfig, distill_loss, policy_loss, token_entropy, token_logprobs
from erl_mega.kernels.results import PolicyLossOutput
from erl_mega.kernels.token_layout import check_cu_seqlens, flatten_tokens, unpack_to_padded


class _GatherVocab(torch.autograd.Function):
    """All-gather weight shards [V / tp, H] -> [V, H]; every rank computes the same loss, so the
    gradient of a shard is its slice of the full gradient (no communication backward)."""

    @staticmethod
    def forward(ctx, shard, group):
        parts = [torch.empty_like(shard) for _ in range(dist.get_world_size(group))]
        dist.all_gather(parts, shard.contiguous(), group=group)
        ctx.rows = (dist.get_rank(group) * shard.shape[0], shard.shape[0])
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad):
        start, rows = ctx.rows
        return grad[start : start + rows], None


def _logits(hidden: Tensor, weight: Tensor, group: dist.ProcessGroup | None) -> Tensor:
    """hidden [..., H] @ full weight.T -> logits [..., V] in the inputs' dtype."""
    if group is not None:
        weight = _GatherVocab.apply(weight, group)
    return hidden @ weight.t()


def fused_policy_loss_reference(
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
    """`policy_loss` on log-probs and entropy of materialised logits; arguments as `fused_policy_loss`."""
    per_token = dict(
        targets=targets,
        old_logp=old_logp,
        advantages=advantages,
        mask=mask,
        ref_logp=ref_logp,
        rollout_logp=rollout_logp,
        logp_coef=logp_coef,
    )
    flat_hidden, cu, flat = flatten_tokens(hidden, cu_seqlens, **per_token)  # validates either layout
    if hidden.dim() == 2:  # packed: pad to [S, T_max] for the row-wise aggregations
        hidden = unpack_to_padded(flat_hidden, cu)
        per_token = {k: unpack_to_padded(v, cu) if v is not None else None for k, v in flat.items()}
    logits = _logits(hidden, weight, group)  # [S, T, V]
    logp = token_logprobs(logits, per_token["targets"].long(), temperature)
    with torch.set_grad_enabled(torch.is_grad_enabled() and cfg.entropy_coef > 0):
        entropy = token_entropy(logits, temperature)
    old = per_token["old_logp"]
    loss, metrics = policy_loss(
        logp,
        logp.detach() if old is None else old,
        per_token["advantages"],
        per_token["mask"].float(),
        cfg,
        ref_logp=per_token["ref_logp"],
        entropy=entropy,
        rollout_logp=per_token["rollout_logp"],
    )
    if logp_coef is not None:
        loss = loss + (per_token["logp_coef"] * logp).sum()
    if cu_seqlens is not None:  # back to the packed [N] layout
        valid = torch.arange(logp.shape[1], device=logp.device) < (cu[1:] - cu[:-1])[:, None]
        logp, entropy = logp[valid], entropy[valid]
    return PolicyLossOutput(loss=loss, metrics=metrics, logp=logp.detach(), entropy=entropy.detach())


def fused_token_logprobs_reference(
    hidden: Tensor,
    weight: Tensor,
    targets: Tensor,
    *,
    temperature: float = 1.0,
    group: dist.ProcessGroup | None = None,
) -> tuple[Tensor, Tensor]:
    """`token_logprobs` and `token_entropy` of materialised logits, each shaped like targets."""
    if hidden.shape[:-1] != targets.shape:
        raise ValueError(f"hidden {tuple(hidden.shape)} must be targets' shape {tuple(targets.shape)} + [H]")
    with torch.no_grad():
        logits = _logits(hidden, weight, group)
        return token_logprobs(logits, targets.long(), temperature), token_entropy(logits, temperature)


def packed_distill_loss_reference(
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
    """`distill_loss` on log-probs of materialised logits; arguments as `packed_distill_loss`."""
    check_cu_seqlens(cu_seqlens)
    logits = _logits(unpack_to_padded(hidden, cu_seqlens), weight, group)
    logp = token_logprobs(logits, unpack_to_padded(targets.long(), cu_seqlens))
    return distill_loss(logp, unpack_to_padded(mask.float(), cu_seqlens), seq_weights, aggregation)
