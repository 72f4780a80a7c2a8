"""Loss definitions (PyTorch references): PPO-clip policy loss, KL estimators, entropy, distillation.

Every function takes per-token tensors of shape [B, T] (rows × positions, already aligned so that
position t scores the token at t) and a float loss mask of the same shape. The Triton kernels in
`kernels/` implement the same math and are tested against these functions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import Tensor

# ---- aggregation -----------------------------------------------------------------------------


def _token_mean(values: Tensor, mask: Tensor) -> Tensor:
    return (values * mask).sum() / mask.sum().clamp_min(1.0)


def _seq_mean_token_sum(values: Tensor, mask: Tensor) -> Tensor:
    rows = mask.sum(-1) > 0
    return ((values * mask).sum(-1)[rows]).sum() / rows.sum().clamp_min(1)


def _seq_mean_token_mean(values: Tensor, mask: Tensor) -> Tensor:
    counts = mask.sum(-1)
    rows = counts > 0
    return ((values * mask).sum(-1)[rows] / counts[rows]).sum() / rows.sum().clamp_min(1)


AGGREGATIONS: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "token-mean": _token_mean,
    "seq-mean-token-sum": _seq_mean_token_sum,
    "seq-mean-token-mean": _seq_mean_token_mean,
}


def aggregate(values: Tensor, mask: Tensor, mode: str) -> Tensor:
    """Reduce per-token values [B, T] to a scalar; rows with an empty mask do not count."""
    if mode not in AGGREGATIONS:
        raise ValueError(f"loss aggregation {mode!r}; choose one of {sorted(AGGREGATIONS)}")
    return AGGREGATIONS[mode](values, mask)


# ---- KL estimators (per token, of KL(policy || reference)) ----------------------------------


def _kl_k1(logp: Tensor, ref_logp: Tensor) -> Tensor:
    return logp - ref_logp


def _kl_k3(logp: Tensor, ref_logp: Tensor) -> Tensor:
    log_ratio = ref_logp - logp
    return log_ratio.exp() - log_ratio - 1.0


def _kl_low_var(logp: Tensor, ref_logp: Tensor) -> Tensor:
    # k3 with the log-ratio clamped to ±20 and the result to [-10, 10]: the reference's "low_var_kl".
    log_ratio = (ref_logp - logp).clamp(-20.0, 20.0)
    return (log_ratio.exp() - log_ratio - 1.0).clamp(-10.0, 10.0)


KL_ESTIMATORS: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "k1": _kl_k1,
    "k3": _kl_k3,
    "low_var_kl": _kl_low_var,
}


def kl_penalty(logp: Tensor, ref_logp: Tensor, kind: str) -> Tensor:
    """Per-token KL estimate [B, T] of the policy from the reference policy."""
    if kind not in KL_ESTIMATORS:
        raise ValueError(f"kl estimator {kind!r}; choose one of {sorted(KL_ESTIMATORS)}")
    return KL_ESTIMATORS[kind](logp, ref_logp)


# ---- off-policy correction --------------------------------------------------------------------


def _log_ratio_token(log_ratio: Tensor, mask: Tensor) -> Tensor:
    return log_ratio


def _log_ratio_sequence(log_ratio: Tensor, mask: Tensor) -> Tensor:
    return (log_ratio * mask).sum(-1, keepdim=True).expand_as(log_ratio)


def _log_ratio_geometric(log_ratio: Tensor, mask: Tensor) -> Tensor:
    mean = (log_ratio * mask).sum(-1, keepdim=True) / mask.sum(-1, keepdim=True).clamp_min(1.0)
    return mean.expand_as(log_ratio)


# How a row's per-token log-ratios log(pi_old / pi_rollout) become the log-weight of each token.
IS_LEVELS: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "token": _log_ratio_token,  # w_t = pi_old(y_t) / pi_rollout(y_t)
    "sequence": _log_ratio_sequence,  # w = prod_t w_t, one weight for the whole row
    "geometric": _log_ratio_geometric,  # w = (prod_t w_t)^(1/|y|), the length-normalised row weight
}
IS_MODES = ("truncate", "mask")  # TIS: min(w, cap); MIS: w where floor <= w <= cap, else the token drops


@dataclass(frozen=True)
class OffPolicyConfig:
    """Importance sampling of stale / mismatched rollouts toward the trainer's old policy (verl, slime, AReaL)."""

    mode: str | None = field(default=None, metadata={"allowed": IS_MODES})  # None: no correction | truncate (TIS) | mask (MIS)
    level: str = field(default="token", metadata={"allowed": tuple(IS_LEVELS)})  # token | sequence | geometric
    cap: float = field(default=2.0, metadata={"allowed": "> 0"})  # upper threshold on w (TIS caps at it; MIS drops above it)
    floor: float = field(default=0.0, metadata={"allowed": ">= 0"})  # MIS lower threshold: w below it drops (0: none)

    def __post_init__(self) -> None:
        if self.mode is not None and self.mode not in IS_MODES:
            raise ValueError(f"off_policy.mode={self.mode!r}; choose null or one of {list(IS_MODES)}")
        if self.level not in IS_LEVELS:
            raise ValueError(f"off_policy.level={self.level!r}; choose one of {sorted(IS_LEVELS)}")
        if not 0 <= self.floor < self.cap:
            raise ValueError(f"off_policy.floor={self.floor}, cap={self.cap}; need 0 <= floor < cap")


def off_policy_weights(old_logp: Tensor, rollout_logp: Tensor, mask: Tensor, cfg: OffPolicyConfig) -> tuple[Tensor, dict[str, Tensor]]:
    """Detached per-token weights [B, T] on the policy-gradient term, and their statistics over loss tokens."""
    log_ratio = ((old_logp - rollout_logp) * mask).detach()
    # +-20 on the log-weight, as verl: a sequence of hundreds of tokens must not overflow exp().
    raw = IS_LEVELS[cfg.level](log_ratio, mask).clamp(-20.0, 20.0).exp()
    if cfg.mode == "truncate":
        weights, dropped = raw.clamp(max=cfg.cap), torch.zeros_like(raw, dtype=torch.bool)
    else:
        dropped = (raw > cfg.cap) | (raw < cfg.floor)
        weights = torch.where(dropped, torch.zeros_like(raw), raw)
    metrics = {
        "is_weight_mean": _token_mean(raw, mask),
        "is_truncated_frac": _token_mean((raw > cfg.cap).float(), mask),
        "is_dropped_frac": _token_mean(dropped.float(), mask),
    }
    return weights * mask, metrics


# ---- policy loss ------------------------------------------------------------------------------


@dataclass(frozen=True)
class PolicyLossConfig:
    """PPO-clip knobs; defaults as the reference (DAPO clip-higher, dual-clip 3, low-var KL 1e-3)."""

    # "allowed": the range config load checks (erl_mega/config/rules.py), field by field, before any work
    clip_low: float = field(default=0.2, metadata={"allowed": "[0, 1)"})
    clip_high: float = field(default=0.28, metadata={"allowed": ">= 0"})  # clip-high 0.28: DAPO's clip-higher, as the reference
    # None disables; else the lower bound c on negative-advantage ratios
    dual_clip: float | None = field(default=3.0, metadata={"allowed": "> 1"})
    kl_coef: float = field(default=0.001, metadata={"allowed": ">= 0"})
    kl_kind: str = field(default="low_var_kl", metadata={"allowed": tuple(KL_ESTIMATORS)})
    entropy_coef: float = field(default=0.0, metadata={"allowed": "finite"})
    aggregation: str = field(default="seq-mean-token-sum", metadata={"allowed": tuple(AGGREGATIONS)})
    # truncated importance weight between trainer and rollout log-probs
    tis_cap: float | None = field(default=None, metadata={"allowed": "> 0"})
    # TIS / MIS per token or sequence (stale async rows)
    off_policy: OffPolicyConfig = field(default=OffPolicyConfig(), metadata={"allowed": "any"})

    def __post_init__(self) -> None:
        if not (0 <= self.clip_low < 1 and self.clip_high >= 0):
            raise ValueError(f"clip_low={self.clip_low}, clip_high={self.clip_high}; need 0<=low<1, high>=0")
        if self.dual_clip is not None and self.dual_clip <= 1:
            raise ValueError(f"dual_clip={self.dual_clip}; must be > 1 or None")
        if self.kl_kind not in KL_ESTIMATORS:
            raise ValueError(f"kl_kind={self.kl_kind!r}; choose one of {sorted(KL_ESTIMATORS)}")
        if self.aggregation not in AGGREGATIONS:
            raise ValueError(f"aggregation={self.aggregation!r}; choose one of {sorted(AGGREGATIONS)}")
        if self.tis_cap is not None and self.tis_cap <= 0:
            raise ValueError(f"tis_cap={self.tis_cap}; must be > 0 or None")
        if self.tis_cap is not None and self.off_policy.mode is not None:
            raise ValueError("tis_cap and off_policy.mode both correct toward the rollout policy; set one")


def ppo_clip_per_token(logp: Tensor, old_logp: Tensor, advantages: Tensor, cfg: PolicyLossConfig) -> tuple[Tensor, Tensor]:
    """Per-token clipped surrogate loss [B, T] and whether each token was clipped [B, T]."""
    ratio = (logp - old_logp).exp()
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1.0 - cfg.clip_low, 1.0 + cfg.clip_high)
    loss = torch.maximum(unclipped, clipped)
    was_clipped = clipped > unclipped
    if cfg.dual_clip is not None:
        # Dual-clip (Ye et al. 2020): for A < 0 bound the loss by -c·A so huge ratios cannot explode it.
        bound = -advantages * cfg.dual_clip
        dual = torch.minimum(loss, bound)
        was_clipped = was_clipped | ((advantages < 0) & (loss > bound))
        loss = torch.where(advantages < 0, dual, loss)
    return loss, was_clipped


def policy_loss(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    cfg: PolicyLossConfig,
    ref_logp: Tensor | None = None,
    entropy: Tensor | None = None,
    rollout_logp: Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """The GRPO/PPO objective for one batch: clipped surrogate + KL + entropy bonus, aggregated."""
    metrics: dict[str, Tensor] = {}
    if cfg.off_policy.mode is not None and rollout_logp is not None:
        weights, metrics = off_policy_weights(old_logp, rollout_logp, mask, cfg.off_policy)
        advantages = advantages * weights  # w >= 0, detached: w * PPO(A) = PPO(w * A), dual-clip included
    per_token, was_clipped = ppo_clip_per_token(logp, old_logp, advantages, cfg)
    if cfg.tis_cap is not None and rollout_logp is not None:
        # Truncated importance sampling: correct for the rollout engine sampling from a slightly
        # different distribution than the trainer computes (numerics, stale weights).
        per_token = per_token * (old_logp - rollout_logp).exp().clamp(max=cfg.tis_cap).detach()
    metrics["clip_frac"] = _token_mean(was_clipped.float(), mask).detach()
    if cfg.kl_coef > 0:
        if ref_logp is None:
            raise ValueError("kl_coef > 0 needs reference log-probs (ref_logp)")
        kl = kl_penalty(logp, ref_logp, cfg.kl_kind)
        per_token = per_token + cfg.kl_coef * kl
        metrics["kl"] = _token_mean(kl, mask).detach()
    if cfg.entropy_coef > 0:
        if entropy is None:
            raise ValueError("entropy_coef > 0 needs per-token entropy")
        per_token = per_token - cfg.entropy_coef * entropy
    if entropy is not None:
        metrics["entropy"] = _token_mean(entropy, mask).detach()
    loss = aggregate(per_token, mask, cfg.aggregation)
    metrics["policy_loss"] = loss.detach()
    return loss, metrics


# ---- distillation ----------------------------------------------------------------------------


def distill_loss(logp: Tensor, mask: Tensor, weights: Tensor, aggregation: str) -> Tensor:
    """Weighted SFT cross-entropy: -log p of the target tokens, each row scaled by its weight [B]."""
    return aggregate(-logp * weights[:, None], mask, aggregation)


# ---- token statistics from logits --------------------------------------------------------------


def token_logprobs(logits: Tensor, targets: Tensor, temperature: float = 1.0) -> Tensor:
    """log p(target) under softmax(logits / T): logits [B, T, V], targets [B, T] -> [B, T], at least fp32."""
    logits = _at_least_fp32(logits) / temperature
    return logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)


def token_entropy(logits: Tensor, temperature: float = 1.0) -> Tensor:
    """Entropy of softmax(logits / T) per position: [B, T, V] -> [B, T], at least fp32 (-inf logits allowed)."""
    logp = torch.log_softmax(_at_least_fp32(logits) / temperature, dim=-1)
    return torch.special.entr(logp.exp()).sum(-1)


def _at_least_fp32(x: Tensor) -> Tensor:
    return x if x.dtype == torch.float64 else x.float()
