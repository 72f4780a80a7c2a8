"""Group advantages (Triton, one launch) against `erl_mega.kernels.advantages.group_advantages`."""

from __future__ import annotations

import pytest
import torch

from erl_mega.kernels.advantages import group_advantages as reference
from erl_mega.kernels.dispatch import group_advantages
from erl_mega.kernels.group_advantages import BLOCK_I, BLOCK_J, group_advantages_triton

MODES = ["grpo", "drgrpo"]


def _ragged(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Rewards [n] and unsorted, non-contiguous int64 group ids [n] of uneven sizes (some of one)."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, max(1, n // 3), (n,), generator=gen) * 7919 - 50  # negative and sparse ids
    return torch.rand(n, generator=gen) * 4 - 1, ids


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("n", [1, 2, 37, BLOCK_I * 2 + 1, BLOCK_J + 5])
def test_ragged_groups_match_reference(n, mode, device):
    rewards, ids = _ragged(n)
    got = group_advantages_triton(rewards.to(device), ids.to(device), mode)
    torch.testing.assert_close(got.cpu(), reference(rewards, ids, mode), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("mode", MODES)
def test_per_role_ids_binary_rewards_and_degenerate_groups(mode, device):
    """Prompt p's role r is group 2p + r; a solved-by-all group has std 0; a group of one gets mean 0, std 1."""
    prompts = torch.tensor([0, 0, 0, 0, 1, 1, 1, 2, 3, 3])
    roles = torch.tensor([0, 1, 0, 1, 0, 0, 1, 0, 1, 1])
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0, 1.0, 0.0, 0.0], dtype=torch.bfloat16)
    ids = (prompts * 2 + roles).int()
    got = group_advantages_triton(rewards.to(device), ids.to(device), mode)
    torch.testing.assert_close(got.cpu(), reference(rewards, ids, mode), atol=1e-5, rtol=1e-5)


def test_empty_input(device):
    empty = torch.empty(0, device=device)
    assert group_advantages_triton(empty, empty.long(), "grpo").shape == (0,)


def test_cpu_dispatch_uses_the_reference():
    rewards, ids = _ragged(20)
    assert torch.equal(group_advantages(rewards, ids), reference(rewards, ids))


@pytest.mark.parametrize(
    ("rewards", "ids", "mode", "message"),
    [
        (torch.ones(3), torch.zeros(3, dtype=torch.long), "ppo", "mode"),
        (torch.ones(3), torch.zeros(2, dtype=torch.long), "grpo", "equal 1-D"),
        (torch.ones(3), torch.zeros(3), "grpo", "integer"),
    ],
)
def test_bad_inputs_raise(rewards, ids, mode, message):
    with pytest.raises(ValueError, match=message):
        group_advantages_triton(rewards, ids, mode)


@pytest.mark.gpu
@pytest.mark.parametrize("mode", MODES)
def test_gpu_many_groups(mode):
    rewards, ids = _ragged(20_011, seed=1)
    got = group_advantages_triton(rewards.cuda(), ids.cuda(), mode)
    torch.testing.assert_close(got.cpu(), reference(rewards, ids, mode), atol=1e-5, rtol=1e-5)
