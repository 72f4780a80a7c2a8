"""Fused lm-head log-prob / entropy + PPO-clip policy loss (Triton), without [N, V] logits.

Same math as `erl_mega.kernels.losses.policy_loss` on `token_logprobs` / `token_entropy` of
hidden @ weight.T: clip-low/high, dual-clip, KL k1/k3/low_var_kl, entropy bonus, truncated importance
weights, off-policy TIS / MIS (folded into the advantages) and the three aggregations. The per-token loss
and its derivative are one Triton kernel; the vocab-wide work is `erl_mega.kernels.chunked_lm_head`.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.distributed as dist
import triton
import triton.language as tl
from torch import Tensor

from erl_mega.kernels.losses import OffPolicyConfig, PolicyLossConfig, off_policy_weights
from erl_mega.kernels.chunked_lm_head import DEFAULT_CHUNK_ROWS, CoefFn, lm_head_pass, scaled_saved_grads
from erl_mega.kernels.results import PolicyLossOutput
from erl_mega.kernels.token_layout import aggregation_weights, flatten_tokens, unpack_to_padded

KL_KINDS = {"k1": 1, "k3": 2, "low_var_kl": 3}  # 0: no KL term (kl_coef == 0)
BLOCK_TOKENS = 1024


@triton.jit
def _policy_token_kernel(
    logp_ptr,
    entropy_ptr,
    old_ptr,
    adv_ptr,
    ref_ptr,
    rollout_ptr,
    coef_ptr,
    mask_ptr,
    agg_ptr,
    per_token_ptr,
    clipped_ptr,
    kl_ptr,
    g_logp_ptr,
    g_entropy_ptr,
    n,
    clip_low,
    clip_high,
    dual_clip,
    kl_coef,
    entropy_coef,
    tis_cap,
    HAS_OLD: tl.constexpr,
    HAS_COEF: tl.constexpr,
    HAS_DUAL: tl.constexpr,
    HAS_TIS: tl.constexpr,
    KL_KIND: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """Per-token loss, clipped flag and KL, and d(aggregated loss)/d(logp), d(.)/d(entropy).

    Without old log-probs the update is on-policy (old = logp, detached); a per-token coefficient
    adds coef * logp to the loss outside the policy mask's aggregation (distillation rows).
    """
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    valid = offs < n
    logp = tl.load(logp_ptr + offs, mask=valid, other=0.0)
    if HAS_OLD:
        old = tl.load(old_ptr + offs, mask=valid, other=0.0).to(tl.float32)
    else:
        old = logp
    adv = tl.load(adv_ptr + offs, mask=valid, other=0.0).to(tl.float32)
    entropy = tl.load(entropy_ptr + offs, mask=valid, other=0.0)
    live = tl.load(mask_ptr + offs, mask=valid, other=0.0).to(tl.float32) != 0
    agg = tl.load(agg_ptr + offs, mask=valid, other=0.0)

    ratio = tl.exp(logp - old)
    unclipped = -adv * ratio
    clipped = -adv * tl.minimum(tl.maximum(ratio, 1.0 - clip_low), 1.0 + clip_high)
    loss = tl.maximum(unclipped, clipped)
    # inside the clip range both branches are equal and both carry -A·ratio (torch splits the tie)
    d_loss = tl.where(unclipped >= clipped, -adv * ratio, 0.0)
    was_clipped = clipped > unclipped
    if HAS_DUAL:
        bound = -adv * dual_clip
        over = (adv < 0) & (loss > bound)
        was_clipped = was_clipped | over
        loss = tl.where(over, bound, loss)
        d_loss = tl.where(over, 0.0, d_loss)
    if HAS_TIS:
        rollout = tl.load(rollout_ptr + offs, mask=valid, other=0.0).to(tl.float32)
        tis = tl.minimum(tl.exp(old - rollout), tis_cap)
        loss = loss * tis
        d_loss = d_loss * tis
    if KL_KIND != 0:
        ref = tl.load(ref_ptr + offs, mask=valid, other=0.0).to(tl.float32)
        if KL_KIND == 1:
            kl = logp - ref
            d_kl = tl.full(kl.shape, 1.0, tl.float32)
        elif KL_KIND == 2:
            e = tl.exp(ref - logp)
            kl = e - (ref - logp) - 1.0
            d_kl = 1.0 - e
        else:
            raw = ref - logp
            x = tl.minimum(tl.maximum(raw, -20.0), 20.0)
            e = tl.exp(x)
            kl_raw = e - x - 1.0
            kl = tl.minimum(tl.maximum(kl_raw, -10.0), 10.0)
            inside = (raw >= -20.0) & (raw <= 20.0) & (kl_raw >= -10.0) & (kl_raw <= 10.0)
            d_kl = tl.where(inside, 1.0 - e, 0.0)
        loss = loss + kl_coef * kl
        d_loss = d_loss + kl_coef * d_kl
        tl.store(kl_ptr + offs, tl.where(live, kl, 0.0), mask=valid)
    loss = loss - entropy_coef * entropy
    tl.store(per_token_ptr + offs, tl.where(live, loss, 0.0), mask=valid)
    tl.store(clipped_ptr + offs, (was_clipped & live).to(tl.float32), mask=valid)
    g_logp = tl.where(live, agg * d_loss, 0.0)
    if HAS_COEF:
        g_logp += tl.load(coef_ptr + offs, mask=valid, other=0.0).to(tl.float32)
    tl.store(g_logp_ptr + offs, g_logp, mask=valid)
    tl.store(g_entropy_ptr + offs, -entropy_coef * agg, mask=valid)


def _policy_coefs(tokens: dict, agg: Tensor, out: dict[str, Tensor], cfg: PolicyLossConfig) -> CoefFn:
    """The CoefFn of the policy loss: runs the per-token kernel on a chunk, filling `out` as it goes."""
    has_tis = cfg.tis_cap is not None and tokens["rollout_logp"] is not None
    kl_kind = KL_KINDS[cfg.kl_kind] if cfg.kl_coef > 0 else 0

    def coefs(start: int, end: int, logp: Tensor, entropy: Tensor) -> tuple[Tensor, Tensor | None]:
        g_logp, g_entropy = torch.empty_like(logp), torch.empty_like(logp)
        part = {k: v[start:end] if v is not None else logp for k, v in tokens.items()}  # logp: unused stand-in
        _policy_token_kernel[(triton.cdiv(end - start, BLOCK_TOKENS),)](
            logp,
            entropy,
            part["old_logp"],
            part["advantages"],
            part["ref_logp"],
            part["rollout_logp"],
            part["logp_coef"],
            part["mask"],
            agg[start:end],
            out["per_token"][start:end],
            out["clipped"][start:end],
            out["kl"][start:end],
            g_logp,
            g_entropy,
            end - start,
            cfg.clip_low,
            cfg.clip_high,
            cfg.dual_clip or 0.0,
            cfg.kl_coef,
            cfg.entropy_coef,
            cfg.tis_cap or 0.0,
            HAS_OLD=tokens["old_logp"] is not None,
            HAS_COEF=tokens["logp_coef"] is not None,
            HAS_DUAL=cfg.dual_clip is not None,
            HAS_TIS=has_tis,
            KL_KIND=kl_kind,
            BLOCK=BLOCK_TOKENS,
        )
        return g_logp, g_entropy if cfg.entropy_coef != 0 else None

    return coefs


class _PolicyLossFunction(torch.autograd.Function):
    """loss(hidden, weight); the gradient is formed in the forward and scaled in the backward."""

    @staticmethod
    def forward(ctx, hidden, weight, tokens, cu_seqlens, cfg, temperature, group, chunk_rows, grad_enabled):
        n = hidden.shape[0]
        agg = aggregation_weights(tokens["mask"], cu_seqlens, cfg.aggregation)  # [N] dL/d(per-token loss)
        out = {k: torch.empty(n, device=hidden.device, dtype=torch.float32) for k in ("per_token", "clipped", "kl")}
        result = lm_head_pass(
            hidden,
            weight,
            tokens["targets"],
            temperature=temperature,
            coef_fn=_policy_coefs(tokens, agg, out, cfg),
            need_grad_hidden=grad_enabled and ctx.needs_input_grad[0],  # needs_input_grad ignores no_grad
            need_grad_weight=grad_enabled and ctx.needs_input_grad[1],
            group=group,
            chunk_rows=chunk_rows,
        )
        ctx.save_for_backward(result.grad_hidden, result.grad_weight)
        policy = (agg * out["per_token"]).sum()
        coef = tokens["logp_coef"]
        loss = policy.clone() if coef is None else policy + (coef * result.logp).sum()  # a tensor of its own
        ctx.mark_non_differentiable(result.logp, result.entropy, out["clipped"], out["kl"], policy)
        return loss, result.logp, result.entropy, out["clipped"], out["kl"], policy

    @staticmethod
    def backward(ctx, grad_loss, *_):
        return scaled_saved_grads(ctx, grad_loss, 9)


def _token_mean(values: Tensor, mask: Tensor) -> Tensor:
    return ((values * mask).sum() / mask.sum().clamp_min(1.0)).detach()


def fused_policy_loss_triton(
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
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
) -> PolicyLossOutput:
    """The policy loss of `policy_loss(token_logprobs(hidden @ weight.T / T), ...)` without [N, V] logits.

    hidden [B, T, H] padded (rows are sequences) or [N, H] packed with cu_seqlens [S + 1]; weight
    [V, H] (or this rank's [V / tp, H] shard with `group`); per-token tensors [B, T] or [N];
    old_logp None: on-policy; logp_coef adds sum(logp_coef * logp) to the loss (not to `policy_loss`).
    """
    if cfg.kl_coef > 0 and ref_logp is None:
        raise ValueError("kl_coef > 0 needs reference log-probs (ref_logp)")
    flat_hidden, cu, tokens = flatten_tokens(
        hidden,
        cu_seqlens,
        targets=targets,
        old_logp=old_logp,
        advantages=advantages,
        mask=mask,
        ref_logp=ref_logp,
        rollout_logp=rollout_logp,
        logp_coef=logp_coef,
    )
    tokens = {k: v.contiguous() if v is not None else None for k, v in tokens.items()}
    is_metrics: dict[str, Tensor] = {}
    if cfg.off_policy.mode is not None and tokens["rollout_logp"] is not None:
        tokens["advantages"], is_metrics = _off_policy_advantages(flat_hidden, weight, tokens, cu, cfg, temperature, group,
                                                                  chunk_rows)
        cfg = dataclasses.replace(cfg, off_policy=OffPolicyConfig())
    loss, logp, entropy, clipped, kl, policy = _PolicyLossFunction.apply(
        flat_hidden, weight, tokens, cu, cfg, temperature, group, chunk_rows, torch.is_grad_enabled()
    )
    flat_mask = tokens["mask"].float()
    metrics = is_metrics | {"clip_frac": _token_mean(clipped, flat_mask)}
    if cfg.kl_coef > 0:
        metrics["kl"] = _token_mean(kl, flat_mask)
    metrics["entropy"] = _token_mean(entropy, flat_mask)
    metrics["policy_loss"] = policy.detach()
    return PolicyLossOutput(
        loss=loss, metrics=metrics, logp=logp.view(targets.shape), entropy=entropy.view(targets.shape)
    )


def _off_policy_advantages(flat_hidden: Tensor, weight: Tensor, tokens: dict[str, Tensor | None], cu: Tensor,
                           cfg: PolicyLossConfig, temperature: float, group: dist.ProcessGroup | None,
                           chunk_rows: int) -> tuple[Tensor, dict[str, Tensor]]:
    """TIS / MIS folded into the advantages: the weights depend only on old and rollout log-probs and are >= 0,
    so w * PPO(A) = PPO(w * A) and the kernel needs no new input. On-policy (old_logp None) the old log-probs
    are the current ones, from one extra no-grad pass over the lm-head."""
    old = tokens["old_logp"]
    if old is None:
        with torch.no_grad():
            old = lm_head_pass(flat_hidden, weight, tokens["targets"], temperature=temperature, group=group,
                               chunk_rows=chunk_rows).logp
    padded = {k: unpack_to_padded(v, cu) for k, v in
              {"old": old, "rollout": tokens["rollout_logp"], "mask": tokens["mask"].float()}.items()}
    weights, metrics = off_policy_weights(padded["old"], padded["rollout"], padded["mask"], cfg.off_policy)
    valid = torch.arange(weights.shape[1], device=weights.device) < (cu[1:] - cu[:-1])[:, None]
    return tokens["advantages"] * weights[valid].to(tokens["advantages"].dtype), metrics


def fused_token_logprobs_triton(
    hidden: Tensor,
    weight: Tensor,
    targets: Tensor,
    *,
    temperature: float = 1.0,
    group: dist.ProcessGroup | None = None,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
) -> tuple[Tensor, Tensor]:
    """Log-prob of targets and entropy, each shaped like targets [...], from hidden [..., H]; no gradient.

    For the no-grad passes that recompute old / reference log-probs before an update.
    """
    if hidden.shape[:-1] != targets.shape:
        raise ValueError(f"hidden {tuple(hidden.shape)} must be targets' shape {tuple(targets.shape)} + [H]")
    result = lm_head_pass(
        hidden.reshape(-1, hidden.shape[-1]),
        weight,
        targets.reshape(-1),
        temperature=temperature,
        group=group,
        chunk_rows=chunk_rows,
    )
    return result.logp.view(targets.shape), result.entropy.view(targets.shape)
