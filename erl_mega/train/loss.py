"""The ERL loss of one micro-batch from the lm-head input, through `erl_mega.kernels.dispatch` (Triton on CUDA).

The last pipeline stage hands over hidden states and its vocab shard of the output weight. Only the
hidden states of tokens that carry a loss go through the lm-head, once: the policy loss and the
distillation term (a per-token coefficient on log p) are one fused pass. The kernels compute
vocab-parallel log-probs across the TP group chunk by chunk, so [tokens, vocab] logits are never
held on the GPU, and their d(hidden) is already the full one on every TP rank. Each token is scored
at its row's sampling temperature: logits / T == (hidden / T) @ W.T.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import Tensor

from erl_mega.kernels.dispatch import fused_policy_loss, fused_token_logprobs
from erl_mega.kernels.losses import AGGREGATIONS, PolicyLossConfig
from erl_mega.kernels.token_layout import aggregation_weights, sequence_ids
from erl_mega.train.micro_batches import ModelInputs


@dataclass(frozen=True)
class LossConfig:
    """The policy loss and the distillation term's weight and aggregation."""

    policy: PolicyLossConfig = PolicyLossConfig()
    distill_coef: float = 1.0
    distill_aggregation: str = "token-mean"

    def __post_init__(self) -> None:
        if self.distill_aggregation not in AGGREGATIONS:
            raise ValueError(f"distill_aggregation={self.distill_aggregation!r}; choose one of {sorted(AGGREGATIONS)}")

    @property
    def aggregations(self) -> tuple[str, str]:
        """(policy, distillation) aggregations, in `micro_batches`' order."""
        return self.policy.aggregation, self.distill_aggregation


@dataclass
class LossReport:
    """One micro-batch's share-weighted metrics and its policy tokens' |trainer - rollout| log-prob gaps."""

    sums: dict[str, float] = field(default_factory=dict)
    gaps: Tensor = field(default_factory=lambda: torch.zeros(0))


def loss_hidden(hidden: Tensor, mb: ModelInputs) -> Tensor:
    """Model output [s, b, h] -> the loss tokens' hidden states [k, h], each divided by its temperature."""
    flat = hidden.transpose(0, 1).reshape(-1, hidden.shape[-1])  # [b * s, h] padded, [n, h] packed (b = 1)
    picked = flat.index_select(0, mb.loss_index)
    return picked * mb.inv_temperature.to(picked.dtype)[:, None]


def loss_token_logprobs(hidden: Tensor, weight: Tensor, mb: ModelInputs, tp_group: dist.ProcessGroup | None) -> Tensor:
    """Log-probs [k] of the micro-batch's loss tokens at their rows' temperatures (no gradient)."""
    logp, _ = fused_token_logprobs(loss_hidden(hidden, mb).detach(), weight.detach(), mb.targets, group=tp_group)
    return logp


def behaviour_logprobs(
    h: Tensor, weight: Tensor, mb: ModelInputs, cfg: PolicyLossConfig, tp_group: dist.ProcessGroup | None
) -> Tensor | None:
    """The log-probs importance weights correct toward: the rollout's, except on re-contextualised rows.

    A distilled row was sampled under another system message, so its behaviour log-probs are unknown; it
    takes the old policy's (the current one's, on-policy), so its importance weight is exactly 1.
    None when the loss corrects nothing (no TIS / MIS).
    """
    if cfg.off_policy.mode is None and cfg.tis_cap is None:
        return None
    if bool(mb.behaviour_known.all()):
        return mb.rollout_logprobs
    old = mb.old_logprobs
    if old is None:
        old, _ = fused_token_logprobs(h.detach(), weight.detach(), mb.targets, group=tp_group)
    return torch.where(mb.behaviour_known, mb.rollout_logprobs, old.to(mb.rollout_logprobs.dtype))


def micro_batch_loss(
    hidden: Tensor, weight: Tensor, mb: ModelInputs, cfg: LossConfig, tp_group: dist.ProcessGroup | None
) -> tuple[Tensor, LossReport]:
    """This micro-batch's share of the mini-batch loss (differentiable in hidden and weight) and its report."""
    total = 0.0 * hidden.sum()  # keeps the graph when the micro-batch has no loss tokens (pipeline backward)
    if mb.targets.numel() == 0:
        return total, LossReport()
    h = loss_hidden(hidden, mb)
    seq = sequence_ids(mb.loss_cu_seqlens, mb.targets.numel())
    distill = aggregation_weights(mb.distill_mask, mb.loss_cu_seqlens, cfg.distill_aggregation) * mb.distill_weight[seq]
    scale = mb.policy_share or 1.0  # the kernel's loss is scaled by the policy share: its coefficients are not
    coef = -cfg.distill_coef * mb.distill_share / scale * distill  # d(distillation term)/d(logp)
    out = fused_policy_loss(
        h, weight, mb.targets, mb.old_logprobs, mb.advantages, mb.policy_mask, cfg.policy,
        ref_logp=mb.ref_logprobs, rollout_logp=behaviour_logprobs(h, weight, mb, cfg.policy, tp_group),
        logp_coef=coef if mb.distill_share else None,
        cu_seqlens=mb.loss_cu_seqlens, group=tp_group,
    )
    report = LossReport()
    if mb.policy_share:
        report.sums = {key: mb.policy_share * float(value) for key, value in out.metrics.items()}
        on = mb.policy_mask > 0
        old = out.logp if mb.old_logprobs is None else mb.old_logprobs
        report.sums["ppo_kl"] = mb.policy_share * float((old - out.logp)[on].mean())
        report.gaps = (out.logp - mb.rollout_logprobs)[on & mb.behaviour_known].abs()
    if mb.distill_share:
        report.sums["distill_loss"] = mb.distill_share * float(-(distill * out.logp).sum())
    return total + scale * out.loss, report
