"""Group-relative advantages (GRPO and Dr.GRPO), the PyTorch reference for the Triton kernel."""

from __future__ import annotations

import torch
from torch import Tensor

EPS = 1e-6  # (r - mean) / (std + 1e-6), as the reference


def group_advantages(rewards: Tensor, group_ids: Tensor, mode: str = "grpo") -> Tensor:
    """Per-sample advantage [N] from rewards [N] and integer group ids [N] (ragged groups).

    `grpo`: (r - mean_g) / (std_g + eps) with the unbiased std; `drgrpo`: r - mean_g (Dr.GRPO drops
    the std normalisation). A group of one has no baseline: it gets mean 0 and std 1, as verl does,
    so a degenerate n=1 run degrades to REINFORCE instead of silently learning nothing.
    """
    if mode not in ("grpo", "drgrpo"):
        raise ValueError(f"advantage mode {mode!r}; choose 'grpo' or 'drgrpo'")
    if rewards.shape != group_ids.shape or rewards.dim() != 1:
        raise ValueError(f"rewards {tuple(rewards.shape)} and group_ids {tuple(group_ids.shape)} must be equal 1-D")
    rewards = rewards.double()
    _, inverse = torch.unique(group_ids, return_inverse=True)
    groups = int(inverse.max()) + 1 if len(inverse) else 0
    count = torch.zeros(groups, dtype=torch.float64).index_add_(0, inverse, torch.ones_like(rewards))
    total = torch.zeros(groups, dtype=torch.float64).index_add_(0, inverse, rewards)
    single = count == 1
    mean = torch.where(single, torch.zeros_like(total), total / count)
    centred = rewards - mean[inverse]
    if mode == "drgrpo":
        return centred.float()
    sq = torch.zeros(groups, dtype=torch.float64).index_add_(0, inverse, centred * centred)
    std = torch.where(single, torch.ones_like(sq), (sq / (count - 1).clamp_min(1)).sqrt())
    return (centred / (std[inverse] + EPS)).float()
