"""Fused lm-head log-prob + policy loss (Triton) against the fp64 PyTorch reference (erl_mega.kernels.losses)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import Tensor

from erl_mega.kernels.losses import OffPolicyConfig, PolicyLossConfig
from erl_mega.kernels.dispatch import fused_policy_loss, fused_token_logprobs
from erl_mega.kernels.fused_linear_logprob import fused_policy_loss_triton, fused_token_logprobs_triton
from erl_mega.kernels.reference import fused_policy_loss_reference, fused_token_logprobs_reference

# Forward values come from fp32 logits for either input dtype; 16-bit inputs get a 16-bit d(logits)
# (truncated, not rounded, under the interpreter) and 16-bit gradients, hence the looser gradient bound.
GRAD_TOL = {torch.float32: 1e-4, torch.bfloat16: 3e-2}
VALUE_TOL = 2e-4

CONFIGS = {
    "default": PolicyLossConfig(),  # dual-clip 3, low_var_kl 1e-3, seq-mean-token-sum
    "k1-token-mean": PolicyLossConfig(kl_kind="k1", kl_coef=0.05, aggregation="token-mean"),
    "k3-seq-mean-token-mean": PolicyLossConfig(kl_kind="k3", kl_coef=0.05, aggregation="seq-mean-token-mean"),
    "no-dual-no-kl": PolicyLossConfig(dual_clip=None, kl_coef=0.0),
    "entropy-bonus": PolicyLossConfig(entropy_coef=0.01),
    "tis": PolicyLossConfig(tis_cap=1.5, clip_low=0.1, clip_high=0.1),
    "everything": PolicyLossConfig(entropy_coef=0.02, tis_cap=2.0, kl_kind="k3", kl_coef=0.1, aggregation="token-mean"),
    # stale-row corrections (trainer.async_steps): folded into the advantages on the Triton path
    "tis-token": PolicyLossConfig(off_policy=OffPolicyConfig(mode="truncate", cap=1.2)),
    "mis-token": PolicyLossConfig(off_policy=OffPolicyConfig(mode="mask", cap=1.5, floor=0.7)),
    "mis-sequence": PolicyLossConfig(off_policy=OffPolicyConfig(mode="mask", level="sequence", cap=3.0, floor=0.3)),
    "tis-geometric": PolicyLossConfig(off_policy=OffPolicyConfig(mode="truncate", level="geometric", cap=1.05),
                                      aggregation="token-mean"),
}


def _lm_head(tokens: int, width: int, vocab: int, dtype: torch.dtype, device: torch.device, offset: float = 0.0):
    """hidden [N, H], weight [V, H] with LM-like logits (std ~3); `offset` shifts every logit."""
    hidden = torch.randn(tokens, width, device=device)
    weight = torch.randn(vocab, width, device=device) * (3.0 / width**0.5)
    if offset:
        hidden[:, 0] = 1.0
        weight[:, 0] = offset
    return hidden.to(dtype), weight.to(dtype)


def _tokens(hidden: Tensor, weight: Tensor, mask: Tensor, seed: int = 0) -> dict[str, Tensor]:
    """Targets and per-token inputs [N] with old log-probs near the current ones (ratios around 1)."""
    gen = torch.Generator().manual_seed(seed)
    n, vocab = hidden.shape[0], weight.shape[0]
    targets = torch.randint(0, vocab, (n,), generator=gen)
    targets[0], targets[-1] = 0, vocab - 1  # the vocab edges
    logp, _ = fused_token_logprobs_reference(hidden.double().cpu(), weight.double().cpu(), targets)
    noise = lambda scale: scale * torch.randn(n, generator=gen)  # noqa: E731
    old_logp, advantages, ref_logp = logp + noise(0.3), noise(1.0), logp + noise(0.5)
    rollout_logp = old_logp + noise(0.3)
    if n > 5:  # outliers that reach every branch: dual-clip, below clip-low, both KL clamps, TIS cap
        old_logp[1], advantages[1] = logp[1] - 2.0, -1.0
        old_logp[2] = logp[2] + 2.0
        ref_logp[3], ref_logp[4] = logp[3] + 3.0, logp[4] + 25.0
        rollout_logp[5] = old_logp[5] - 1.0
    tokens = {
        "targets": targets,
        "old_logp": old_logp,
        "advantages": advantages,
        "mask": mask.float(),
        "ref_logp": ref_logp,
        "rollout_logp": rollout_logp,
    }
    return {k: v.to(hidden.device) for k, v in tokens.items()}


def _close(actual: Tensor, expected: Tensor, rtol: float = 0.0) -> None:
    torch.testing.assert_close(actual.double().cpu(), expected.double().cpu(), atol=VALUE_TOL, rtol=rtol)


def _rel_err(actual: Tensor, expected: Tensor) -> float:
    return ((actual.double() - expected.double()).abs().max() / expected.double().abs().max().clamp_min(1e-12)).item()


def _check(hidden, weight, tokens, cfg, *, cu_seqlens=None, temperature=1.0, chunk_rows=8, scale=1.0, grad_tol=None):
    """Run the Triton path and the fp64 reference on the same inputs; compare values and gradients."""
    h_ref = hidden.detach().double().cpu().requires_grad_()
    w_ref = weight.detach().double().cpu().requires_grad_()
    cpu_tokens = {k: None if v is None else v.cpu() for k, v in tokens.items()}
    ref = fused_policy_loss_reference(
        h_ref, w_ref, **cpu_tokens, cfg=cfg, cu_seqlens=cu_seqlens, temperature=temperature
    )
    (scale * ref.loss).backward()

    h = hidden.detach().requires_grad_()
    w = weight.detach().requires_grad_()
    cu = cu_seqlens.to(hidden.device) if cu_seqlens is not None else None
    out = fused_policy_loss_triton(
        h, w, **tokens, cfg=cfg, cu_seqlens=cu, temperature=temperature, chunk_rows=chunk_rows
    )
    (scale * out.loss).backward()

    _close(out.loss, ref.loss, rtol=VALUE_TOL)
    assert out.metrics.keys() == ref.metrics.keys()
    for key, value in ref.metrics.items():
        _close(out.metrics[key], value, rtol=VALUE_TOL)
    _close(out.logp, ref.logp)
    _close(out.entropy, ref.entropy)
    assert h.grad.dtype == hidden.dtype and w.grad.dtype == weight.dtype
    grad_tol = grad_tol or GRAD_TOL[hidden.dtype]
    if ref.loss.requires_grad and h_ref.grad.abs().max() > 0:
        assert _rel_err(h.grad.cpu(), h_ref.grad) < grad_tol
        assert _rel_err(w.grad.cpu(), w_ref.grad) < grad_tol
    else:
        assert h.grad.abs().max() == 0 and w.grad.abs().max() == 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("name", CONFIGS)
def test_every_loss_variant_matches_reference(name, dtype, device, small_vocab_blocks):
    hidden, weight = _lm_head(21, 32, 300, dtype, device)  # 300 = 4 full 64-blocks + a ragged one
    mask = torch.rand(21, generator=torch.Generator().manual_seed(1)) > 0.25
    cu_seqlens = torch.tensor([0, 6, 6, 7, 15, 21])  # an empty and a single-token sequence
    _check(hidden, weight, _tokens(hidden, weight, mask), CONFIGS[name], cu_seqlens=cu_seqlens)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_padded_batch_with_temperature(dtype, device):
    hidden, weight = _lm_head(3 * 7, 48, 100, dtype, device)  # V = 100 below the 128 block
    mask = torch.ones(3, 7, dtype=torch.bool)
    mask[0, 4:] = False
    mask[2] = False  # an empty row does not count in the seq-mean aggregations
    tokens = {k: v.view(3, 7) for k, v in _tokens(hidden, weight, mask.flatten()).items()}
    cfg = dataclasses.replace(CONFIGS["everything"], aggregation="seq-mean-token-mean")
    _check(hidden.view(3, 7, 48), weight, tokens, cfg, temperature=0.6, chunk_rows=5, scale=3.0)


@pytest.mark.filterwarnings("ignore:overflow encountered in exp")  # interpreter: unstored tail lanes
def test_all_negative_logits_need_minus_inf_running_max(device, small_vocab_blocks):
    """Every logit near -120: exp(z - 0) underflows fp32, so a running max started at 0 gives log(0)."""
    hidden, weight = _lm_head(9, 16, 130, torch.float32, device, offset=-120.0)
    tokens = _tokens(hidden, weight, torch.ones(9))
    # d(hidden) of the offset column cancels to ~0 from terms of size 120: fp32 noise of ~1e-4 there
    _check(hidden, weight, tokens, CONFIGS["entropy-bonus"], cu_seqlens=torch.tensor([0, 9]), grad_tol=1e-3)


@pytest.mark.parametrize("tokens", [1, 13], ids=["single-token", "odd"])
def test_empty_mask_gives_zero_loss_and_gradient(tokens, device):
    hidden, weight = _lm_head(tokens, 16, 77, torch.float32, device)
    batch = _tokens(hidden, weight, torch.zeros(tokens))
    _check(hidden, weight, batch, CONFIGS["everything"], cu_seqlens=torch.tensor([0, tokens]))


def test_single_token(device):
    hidden, weight = _lm_head(1, 16, 77, torch.bfloat16, device)
    _check(hidden, weight, _tokens(hidden, weight, torch.ones(1)), CONFIGS["default"], cu_seqlens=torch.tensor([0, 1]))


def test_packed_equals_padded(device):
    """TRL-style invariant: the same sequences packed with cu_seqlens or padded with a mask."""
    hidden, weight = _lm_head(2 * 6, 16, 90, torch.float32, device)
    mask = torch.tensor([1.0] * 4 + [0.0] * 2 + [1.0] * 6)
    tokens = _tokens(hidden, weight, mask)
    cfg = CONFIGS["k3-seq-mean-token-mean"]
    padded = fused_policy_loss_triton(
        hidden.view(2, 6, 16), weight, **{k: v.view(2, 6) for k, v in tokens.items()}, cfg=cfg
    )
    keep = mask.bool().to(device)
    packed = fused_policy_loss_triton(
        hidden[keep],
        weight,
        **{k: v[keep] for k, v in tokens.items()},
        cfg=cfg,
        cu_seqlens=torch.tensor([0, 4, 10], device=device),
    )
    torch.testing.assert_close(packed.loss, padded.loss, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(packed.logp, padded.logp.flatten()[keep])


def test_token_logprobs_forward_only(device, small_vocab_blocks):
    hidden, weight = _lm_head(2 * 5, 16, 200, torch.bfloat16, device)
    targets = torch.randint(0, 200, (2, 5), device=device, dtype=torch.int32)  # int32 ids work too
    logp, entropy = fused_token_logprobs_triton(hidden.view(2, 5, 16), weight, targets, temperature=1.3, chunk_rows=4)
    ref_logp, ref_entropy = fused_token_logprobs_reference(
        hidden.double().view(2, 5, 16), weight.double(), targets, temperature=1.3
    )
    _close(logp, ref_logp)
    _close(entropy, ref_entropy)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_on_policy_and_a_per_token_logp_coefficient_match_reference(dtype, device):
    """old_logp None is the current policy (ratio 1); logp_coef folds e.g. distillation into the same pass."""
    hidden, weight = _lm_head(21, 32, 300, dtype, device)
    gen = torch.Generator().manual_seed(2)
    kinds = torch.rand(21, generator=gen) > 0.5  # policy tokens, the rest carry the coefficient
    tokens = _tokens(hidden, weight, kinds) | {"old_logp": None}
    tokens["logp_coef"] = (-(~kinds).float() * torch.rand(21, generator=gen)).to(device)
    cu_seqlens = torch.tensor([0, 6, 6, 7, 15, 21])
    _check(hidden, weight, tokens, CONFIGS["everything"], cu_seqlens=cu_seqlens, temperature=0.7)
    out = fused_policy_loss_triton(hidden, weight, **tokens, cfg=CONFIGS["default"], cu_seqlens=cu_seqlens.to(device))
    assert out.metrics["clip_frac"] == 0  # on-policy: nothing clipped
    coef_part = (tokens["logp_coef"] * out.logp).sum()
    _close(out.loss - coef_part, out.metrics["policy_loss"])


@pytest.mark.parametrize("name", ["tis-token", "mis-sequence"])
def test_on_policy_off_policy_correction_weighs_against_the_current_policy(name, device):
    """old_logp None: the importance weights compare the current log-probs (one extra no-grad pass) with the rollout's."""
    hidden, weight = _lm_head(21, 32, 300, torch.float32, device)
    mask = torch.rand(21, generator=torch.Generator().manual_seed(3)) > 0.2
    tokens = _tokens(hidden, weight, mask) | {"old_logp": None}
    _check(hidden, weight, tokens, CONFIGS[name], cu_seqlens=torch.tensor([0, 6, 6, 7, 15, 21]))


def test_no_grad_pass_returns_the_same_loss_without_gradient_work(device, monkeypatch):
    import erl_mega.kernels.fused_linear_logprob as module

    asked = []
    real_pass = module.lm_head_pass

    def spy(*args, **kwargs):
        asked.append((kwargs["need_grad_hidden"], kwargs["need_grad_weight"]))
        return real_pass(*args, **kwargs)

    monkeypatch.setattr(module, "lm_head_pass", spy)
    hidden, weight = _lm_head(8, 16, 50, torch.float32, device)
    hidden.requires_grad_()
    tokens = _tokens(hidden.detach(), weight, torch.ones(8))
    cu = torch.tensor([0, 8], device=device)
    with torch.no_grad():
        frozen = fused_policy_loss_triton(hidden, weight, **tokens, cfg=CONFIGS["default"], cu_seqlens=cu)
    live = fused_policy_loss_triton(hidden, weight, **tokens, cfg=CONFIGS["default"], cu_seqlens=cu)
    assert not frozen.loss.requires_grad and live.loss.requires_grad
    assert asked == [(False, False), (True, False)]
    torch.testing.assert_close(frozen.loss, live.loss.detach())


def test_cpu_dispatch_uses_the_reference():
    hidden, weight = _lm_head(6, 8, 20, torch.float32, torch.device("cpu"))
    tokens = _tokens(hidden, weight, torch.ones(6))
    cu = torch.tensor([0, 2, 6])
    got = fused_policy_loss(hidden, weight, **tokens, cfg=CONFIGS["default"], cu_seqlens=cu)
    want = fused_policy_loss_reference(hidden, weight, **tokens, cfg=CONFIGS["default"], cu_seqlens=cu)
    assert torch.equal(got.loss, want.loss)
    torch.testing.assert_close(fused_token_logprobs(hidden, weight, tokens["targets"])[0], got.logp)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"ref_logp": None}, "ref_logp"),
        ({"cu_seqlens": None}, "cu_seqlens"),
        ({"mask": torch.ones(5)}, "mask has shape"),
        ({"cu_seqlens": torch.tensor([6])}, "cu_seqlens must be"),
    ],
)
def test_bad_inputs_raise(change, message):
    hidden, weight = _lm_head(6, 8, 20, torch.float32, torch.device("cpu"))
    args = {**_tokens(hidden, weight, torch.ones(6)), "cu_seqlens": torch.tensor([0, 6]), **change}
    for fn in (fused_policy_loss_triton, fused_policy_loss_reference):
        with pytest.raises(ValueError, match=message):
            fn(hidden, weight, **args, cfg=CONFIGS["default"])


@pytest.mark.parametrize("dtype", [torch.float16, torch.float64], ids=["fp16", "fp64"])
def test_unsupported_dtypes_raise(dtype):
    hidden, weight = _lm_head(4, 8, 20, dtype, torch.device("cpu"))
    with pytest.raises(ValueError, match="must share one of"):
        fused_token_logprobs_triton(hidden, weight, torch.zeros(4, dtype=torch.long))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_gpu_realistic_shapes_match_reference(dtype):
    """Compiled kernels, cuBLAS fp32-output GEMMs and several 2048-row chunks at an odd V."""
    hidden, weight = _lm_head(4099, 256, 32003, dtype, torch.device("cuda"))
    mask = torch.rand(4099) > 0.2
    cu_seqlens = torch.tensor([0, 1000, 1000, 2500, 4099])
    cfg = CONFIGS["everything"]
    _check(hidden, weight, _tokens(hidden, weight, mask), cfg, cu_seqlens=cu_seqlens, chunk_rows=2048, temperature=0.9)
    out = fused_policy_loss(hidden, weight, **_tokens(hidden, weight, mask), cfg=cfg, cu_seqlens=cu_seqlens.cuda())
    assert out.loss.is_cuda
