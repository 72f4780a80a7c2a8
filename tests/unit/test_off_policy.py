"""Off-policy correction (TIS / MIS per token, sequence, geometric) against hand-computed values."""

import math

import pytest
import torch

from erl_mega.kernels.losses import OffPolicyConfig, PolicyLossConfig, off_policy_weights, policy_loss

# Row 0: token ratios old/rollout = 4, 0.5, (pad); row 1: 1.5, 1.5, 1.5.
OLD = torch.zeros(2, 3)
ROLLOUT = -torch.log(torch.tensor([[4.0, 0.5, 7.0], [1.5, 1.5, 1.5]]))
MASK = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])


def weights(**kw) -> torch.Tensor:
    return off_policy_weights(OLD, ROLLOUT, MASK, OffPolicyConfig(**kw))[0]


def test_token_truncated_caps_each_ratio():
    w = weights(mode="truncate", level="token", cap=2.0)
    assert torch.allclose(w, torch.tensor([[2.0, 0.5, 0.0], [1.5, 1.5, 1.5]]))


def test_token_masked_drops_ratios_outside_the_band():
    w = weights(mode="mask", level="token", cap=2.0, floor=0.6)
    assert torch.allclose(w, torch.tensor([[0.0, 0.0, 0.0], [1.5, 1.5, 1.5]]))


def test_sequence_weight_is_the_product_over_the_row_and_ignores_pads():
    w = weights(mode="truncate", level="sequence", cap=5.0)  # row 0: 4 * 0.5 = 2; row 1: 1.5^3 = 3.375 (pad's 7 ignored)
    assert torch.allclose(w, torch.tensor([[2.0, 2.0, 0.0], [3.375, 3.375, 3.375]]))
    w = weights(mode="mask", level="sequence", cap=3.0)  # row 1 drops whole
    assert torch.allclose(w, torch.tensor([[2.0, 2.0, 0.0], [0.0, 0.0, 0.0]]))


def test_geometric_weight_is_the_mean_log_ratio():
    w = weights(mode="truncate", level="geometric", cap=10.0)
    assert torch.allclose(w[0, :2], torch.full((2,), math.sqrt(2.0)))
    assert torch.allclose(w[1], torch.full((3,), 1.5))


def test_metrics_count_loss_tokens_only():
    _, m = off_policy_weights(OLD, ROLLOUT, MASK, OffPolicyConfig(mode="mask", cap=2.0, floor=0.6))
    assert m["is_weight_mean"].item() == pytest.approx((4 + 0.5 + 1.5 * 3) / 5)
    assert m["is_truncated_frac"].item() == pytest.approx(1 / 5)
    assert m["is_dropped_frac"].item() == pytest.approx(2 / 5)


def test_huge_sequence_log_ratio_stays_finite():
    old, rollout = torch.zeros(1, 400), torch.full((1, 400), -1.0)  # sum log-ratio 400 -> clamped at 20
    w, _ = off_policy_weights(old, rollout, torch.ones(1, 400), OffPolicyConfig(mode="truncate", level="sequence", cap=3.0))
    assert torch.isfinite(w).all() and w.max().item() == pytest.approx(3.0)


def test_policy_loss_scales_the_surrogate_and_is_detached():
    cfg = PolicyLossConfig(aggregation="token-mean", kl_coef=0.0, off_policy=OffPolicyConfig(mode="truncate", cap=2.0))
    logp = torch.zeros(2, 3, requires_grad=True)
    loss, metrics = policy_loss(logp, OLD, torch.ones(2, 3), MASK, cfg, rollout_logp=ROLLOUT)
    # -A * ratio(=1) * w over the 5 loss tokens
    assert loss.item() == pytest.approx(-(2.0 + 0.5 + 1.5 * 3) / 5)
    assert "is_weight_mean" in metrics
    loss.backward()  # d/dlogp of -w * exp(logp - old): -w / 5, the weight itself carries no gradient
    assert torch.allclose(logp.grad, -torch.tensor([[2.0, 0.5, 0.0], [1.5, 1.5, 1.5]]) / 5)


def test_config_names_the_bad_field():
    with pytest.raises(ValueError, match="off_policy.mode"):
        OffPolicyConfig(mode="clip")
    with pytest.raises(ValueError, match="off_policy.level"):
        OffPolicyConfig(mode="mask", level="row")
    with pytest.raises(ValueError, match="floor"):
        OffPolicyConfig(mode="mask", cap=1.0, floor=1.0)
    with pytest.raises(ValueError, match="set one"):
        PolicyLossConfig(tis_cap=2.0, off_policy=OffPolicyConfig(mode="truncate"))
