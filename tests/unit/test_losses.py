"""Loss references against hand-computed values and autograd."""

import math

import pytest
import torch

from erl_mega.kernels.losses import (
    PolicyLossConfig,
    aggregate,
    distill_loss,
    kl_penalty,
    policy_loss,
    ppo_clip_per_token,
    token_entropy,
    token_logprobs,
)

NO_KL = dict(kl_coef=0.0)


def test_aggregations_by_hand():
    v = torch.tensor([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0], [9.0, 9.0, 9.0]])
    m = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])  # third row empty: must not count
    assert aggregate(v, m, "token-mean").item() == pytest.approx((1 + 2 + 3 + 4) / 4)
    assert aggregate(v, m, "seq-mean-token-sum").item() == pytest.approx((6 + 4) / 2)
    assert aggregate(v, m, "seq-mean-token-mean").item() == pytest.approx((2 + 4) / 2)
    with pytest.raises(ValueError, match="aggregation"):
        aggregate(v, m, "sum")


def test_ppo_clip_values_by_hand():
    cfg = PolicyLossConfig(clip_low=0.2, clip_high=0.28, dual_clip=3.0, **NO_KL)
    old = torch.zeros(1, 4)
    logp = torch.log(torch.tensor([[1.5, 0.5, 1.1, 5.0]]))
    adv = torch.tensor([[1.0, -1.0, 2.0, -1.0]])
    loss, clipped = ppo_clip_per_token(logp, old, adv, cfg)
    # A>0, ratio 1.5 -> clipped at 1.28; A<0, ratio 0.5 -> max(-(-1*.5), -(-1*.8)) = 0.8;
    # A>0 ratio 1.1 inside -> -2.2; A<0 ratio 5 -> min(5, dual bound 3) = 3
    assert loss.tolist()[0] == pytest.approx([-1.28, 0.8, -2.2, 3.0])
    assert clipped.tolist()[0] == [True, True, False, True]


def test_dual_clip_off_lets_large_ratio_through():
    cfg = PolicyLossConfig(dual_clip=None, **NO_KL)
    loss, _ = ppo_clip_per_token(torch.log(torch.tensor([[5.0]])), torch.zeros(1, 1), torch.tensor([[-1.0]]), cfg)
    assert loss.item() == pytest.approx(5.0)


def test_kl_estimators_by_hand():
    logp, ref = torch.tensor([math.log(0.5)]), torch.tensor([math.log(0.25)])
    r = 0.25 / 0.5
    assert kl_penalty(logp, ref, "k1").item() == pytest.approx(math.log(2))
    assert kl_penalty(logp, ref, "k3").item() == pytest.approx(r - math.log(r) - 1)
    assert kl_penalty(logp, ref, "low_var_kl").item() == pytest.approx(r - math.log(r) - 1)
    huge = kl_penalty(torch.tensor([0.0]), torch.tensor([50.0]), "low_var_kl")
    assert huge.item() == pytest.approx(10.0)  # clamped
    with pytest.raises(ValueError, match="kl estimator"):
        kl_penalty(logp, ref, "k2")


def test_policy_loss_gradient_matches_autograd_of_the_formula():
    torch.manual_seed(0)
    logp = (torch.randn(3, 5, dtype=torch.float64) * 0.1 - 1).requires_grad_()
    old = logp.detach() + torch.randn(3, 5, dtype=torch.float64) * 0.3
    ref = logp.detach() + torch.randn(3, 5, dtype=torch.float64) * 0.1
    adv = torch.randn(3, 1, dtype=torch.float64).expand(3, 5)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [0, 1, 0, 1, 0]], dtype=torch.float64)
    cfg = PolicyLossConfig(kl_coef=0.1, kl_kind="k3", aggregation="token-mean")
    loss, metrics = policy_loss(logp, old, adv, mask, cfg, ref_logp=ref)
    loss.backward()
    ratio = (logp.detach() - old).exp()
    # by hand: the surrogate's gradient is -A*ratio where unclipped, 0 where clipped; k3's is 1 - ref/p
    lo, hi = 1 - cfg.clip_low, 1 + cfg.clip_high
    active = torch.where(adv > 0, ratio < hi, ratio > lo)
    dual = (adv < 0) & (ratio * -adv > -adv * cfg.dual_clip)
    g_sur = torch.where(active & ~dual, -adv * ratio, torch.zeros_like(ratio))
    g_kl = cfg.kl_coef * (1 - (ref - logp.detach()).exp())
    expected = (g_sur + g_kl) * mask / mask.sum()
    torch.testing.assert_close(logp.grad, expected)
    assert 0 <= metrics["clip_frac"] <= 1 and "kl" in metrics


def test_policy_loss_requires_reference_when_kl_on():
    with pytest.raises(ValueError, match="ref_logp"):
        policy_loss(torch.zeros(1, 2), torch.zeros(1, 2), torch.ones(1, 2), torch.ones(1, 2), PolicyLossConfig())


def test_truncated_importance_weight_scales_by_capped_ratio():
    cfg = PolicyLossConfig(tis_cap=2.0, aggregation="token-mean", **NO_KL)
    logp = torch.zeros(1, 2)
    rollout = torch.log(torch.tensor([[0.25, 2.0]]))  # old/rollout = 4 (capped to 2) and 0.5
    loss, _ = policy_loss(logp, logp, torch.ones(1, 2), torch.ones(1, 2), cfg, rollout_logp=rollout)
    assert loss.item() == pytest.approx((-1 * 2.0 + -1 * 0.5) / 2)


def test_entropy_bonus_lowers_loss():
    base = dict(aggregation="token-mean", **NO_KL)
    args = (torch.zeros(1, 2), torch.zeros(1, 2), torch.zeros(1, 2), torch.ones(1, 2))
    ent = torch.full((1, 2), 2.0)
    plain, _ = policy_loss(*args, PolicyLossConfig(**base), entropy=ent)
    bonus, _ = policy_loss(*args, PolicyLossConfig(entropy_coef=0.1, **base), entropy=ent)
    assert bonus.item() == pytest.approx(plain.item() - 0.2)


def test_distill_loss_weights_rows():
    logp = torch.log(torch.tensor([[0.5, 0.5], [0.25, 1.0]]))
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    w = torch.tensor([1.0, 0.5])
    got = distill_loss(logp, mask, w, "token-mean")
    assert got.item() == pytest.approx((2 * math.log(2) + 0.5 * math.log(4)) / 3)


def test_token_logprobs_and_entropy_match_softmax():
    torch.manual_seed(1)
    logits = torch.randn(2, 3, 7)
    targets = torch.randint(0, 7, (2, 3))
    lp = token_logprobs(logits, targets, temperature=0.7)
    ref = torch.log_softmax(logits / 0.7, -1).gather(-1, targets[..., None])[..., 0]
    torch.testing.assert_close(lp, ref)
    p = torch.softmax(logits, -1)
    torch.testing.assert_close(token_entropy(logits), -(p * p.log()).sum(-1))


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="dual_clip"):
        PolicyLossConfig(dual_clip=0.5)
    with pytest.raises(ValueError, match="kl_kind"):
        PolicyLossConfig(kl_kind="x")


def test_entropy_with_masked_vocab_and_fp64_precision():
    logits = torch.tensor([[[0.0, 0.0, float("-inf")]]], dtype=torch.float64)
    assert token_entropy(logits).item() == pytest.approx(math.log(2), abs=1e-12)
    assert token_logprobs(logits, torch.tensor([[1]])).dtype == torch.float64
