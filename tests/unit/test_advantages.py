"""Group-relative advantages: group of one, all-equal rewards, mixed groups, Dr.GRPO."""

import pytest
import torch

from erl_mega.kernels.advantages import EPS, group_advantages


def test_mixed_group_is_standardised_with_unbiased_std():
    r = torch.tensor([1.0, 0.0, 0.0, 1.0])
    adv = group_advantages(r, torch.zeros(4, dtype=torch.long))
    std = r.std()  # unbiased, as torch.std
    torch.testing.assert_close(adv, (r - 0.5) / (std + EPS))


def test_all_equal_rewards_give_zero():
    adv = group_advantages(torch.ones(5), torch.zeros(5, dtype=torch.long))
    assert torch.count_nonzero(adv) == 0


def test_group_of_one_gets_mean_zero_std_one():
    adv = group_advantages(torch.tensor([0.7]), torch.tensor([3]))
    assert adv.item() == pytest.approx(0.7 / (1 + EPS))


def test_ragged_groups_are_independent_and_order_free():
    r = torch.tensor([1.0, 0.0, 5.0, 0.0, 3.0, 1.0])
    g = torch.tensor([2, 2, 9, 2, 9, 4])
    adv = group_advantages(r, g)
    for gid in g.unique():
        sel = g == gid
        if sel.sum() > 1:
            torch.testing.assert_close(adv[sel], (r[sel] - r[sel].mean()) / (r[sel].std() + EPS))
    perm = torch.tensor([5, 3, 1, 0, 4, 2])
    torch.testing.assert_close(group_advantages(r[perm], g[perm]), adv[perm])


def test_drgrpo_is_mean_only():
    r = torch.tensor([2.0, 0.0, 1.0])
    torch.testing.assert_close(group_advantages(r, torch.zeros(3, dtype=torch.long), "drgrpo"), r - 1.0)


def test_bad_inputs():
    with pytest.raises(ValueError, match="mode"):
        group_advantages(torch.ones(2), torch.zeros(2, dtype=torch.long), "ppo")
    with pytest.raises(ValueError, match="1-D"):
        group_advantages(torch.ones(2, 2), torch.zeros(2, 2, dtype=torch.long))
