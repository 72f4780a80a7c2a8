"""The ERL loss of one micro-batch from the lm-head input, through `erl_mega.kernels.dispatch` (Triton on CUDA).

The last pipeline stage hands over hidden states and its vocab shard of the output weight; the
kernels compute vocab-parallel log-probs across the TP group chunk by chunk, so [tokens, vocab]
logits are never held on the GPU, and their d(hidden) is already the full one on every TP rank.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import Tensor

from erl_mega.kernels.losses import PolicyLossConfig
from erl_mega.train.micro_batches import ModelInputs
from erl_mega.kernels.dispatch import (
    fused_policy_loss,
    fused_token_logprobs,
    packed_distill_loss,
)
from erl_mega.kernels.token_layout import padded_cu_seqlens


@dataclass(frozen=True)
class LossConfig:
    """The policy loss, the distillation term's weight and aggregation, and the log-prob temperature."""

    policy: PolicyLossConfig = PolicyLossConfig()
    distill_coef: float = 1.0
    distill_aggregation: str = "token-mean"
    temperature: float = 1.0  # must equal the rollout temperature, so ratios compare like with like

    @property
    def aggregations(self) -> tuple[str, str]:
        """(policy, distillation) aggregations, in `micro_batches`' order."""
        return self.policy.aggregation, self.distill_aggregation


@dataclass
class LossReport:
    """One micro-batch's share-weighted metrics and its policy tokens' |trainer - rollout| log-prob gaps."""

    sums: dict[str, float] = field(default_factory=dict)
    gaps: Tensor = field(default_factory=lambda: torch.zeros(0))


def token_hidden(hidden: Tensor, mb: ModelInputs) -> Tensor:
    """Model output [s, b, h] in the targets' layout: [b, s, h] padded, [n, h] packed."""
    return hidden[:, 0] if mb.cu_seqlens is not None else hidden.transpose(0, 1)


def micro_batch_loss(
    hidden: Tensor,
    weight: Tensor,
    mb: ModelInputs,
    cfg: LossConfig,
    ref_logp: Tensor | None,
    tp_group: dist.ProcessGroup | None,
) -> tuple[Tensor, LossReport]:
    """This micro-batch's share of the batch loss (differentiable in hidden and weight) and its report."""
    h = token_hidden(hidden, mb)
    total = 0.0 * h.sum()  # keeps the graph when the micro-batch has no loss tokens (pipeline backward)
    report = LossReport()
    if mb.policy_mask.sum() > 0:
        # One update per batch: the "old" policy is the current one, detached (ratio 1, PPO gradient).
        old_logp, _ = fused_token_logprobs(h.detach(), weight.detach(), mb.targets, temperature=cfg.temperature, group=tp_group)
        out = fused_policy_loss(
            h, weight, mb.targets, old_logp, mb.advantages, mb.policy_mask, cfg.policy,
            ref_logp=ref_logp, rollout_logp=mb.rollout_logprobs, cu_seqlens=_cu(mb),
            temperature=cfg.temperature, group=tp_group,
        )
        total = total + mb.policy_share * out.loss
        report.sums = {key: mb.policy_share * float(value) for key, value in out.metrics.items()}
        on = mb.policy_mask > 0
        report.gaps = (out.logp - mb.rollout_logprobs)[on].abs()
    if mb.distill_mask.sum() > 0:
        cu = mb.cu_seqlens if mb.cu_seqlens is not None else padded_cu_seqlens(*mb.targets.shape, h.device)
        # logits / T == (hidden / T) @ W.T: the distillation term sees the same tempered log-probs.
        d = packed_distill_loss(
            h.reshape(-1, h.shape[-1]) / cfg.temperature, weight, mb.targets.reshape(-1), mb.distill_mask.reshape(-1),
            cu, mb.distill_weight, cfg.distill_aggregation, group=tp_group,
        )
        total = total + cfg.distill_coef * mb.distill_share * d
        report.sums["distill_loss"] = mb.distill_share * float(d.detach())
    return total, report


def _cu(mb: ModelInputs) -> Tensor | None:
    return None if mb.cu_seqlens is None else mb.cu_seqlens.long()
