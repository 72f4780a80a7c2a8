"""Frozen result bundles that the kernel entry points (Triton and reference alike) return."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor


@dataclass(frozen=True)
class PolicyLossOutput:
    """The policy loss of one micro-batch and the per-token statistics it was built from."""

    loss: Tensor  # [] scalar; differentiable w.r.t. hidden and weight
    metrics: dict[str, Tensor]  # detached scalars, keys as erl_mega.kernels.losses.policy_loss
    logp: Tensor  # shaped like targets ([B, T] or [N]), fp32, detached
    entropy: Tensor  # shaped like targets, fp32, detached
