"""Group-relative advantages (GRPO / Dr.GRPO) for ragged groups in one Triton launch.

Each program takes a block of samples and sweeps all samples to find its group's count, mean and
centred sum of squares by id equality: O(N²) compares, no sort, no host sync, any integer ids (a
per-role split is a different id). N is the number of trajectories (thousands), so the sweep is
microseconds; `erl_mega.kernels.advantages.group_advantages` is the reference.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from erl_mega.kernels.advantages import EPS
from erl_mega.kernels.tile_reductions import tile_sum

BLOCK_I = 32
BLOCK_J = 64
MODES = {"grpo": True, "drgrpo": False}  # mode -> divide by the group std


@triton.jit
def _same_group_tile(rewards_ptr, ids_ptr, id_i, j0, n, BJ: tl.constexpr):
    """Column tile j0..j0+BJ: its rewards (fp64) and which of them share row i's group [BI, BJ]."""
    offs_j = j0 + tl.arange(0, BJ)
    valid_j = offs_j < n
    r_j = tl.load(rewards_ptr + offs_j, mask=valid_j, other=0.0).to(tl.float64)
    id_j = tl.load(ids_ptr + offs_j, mask=valid_j, other=0)
    return r_j, (id_i[:, None] == id_j[None, :]) & valid_j[None, :]


@triton.jit
def _group_advantages_kernel(
    rewards_ptr, ids_ptr, out_ptr, n, eps, NORMALISE: tl.constexpr, BI: tl.constexpr, BJ: tl.constexpr
):
    """out[i] = (r_i - mean_g) / (std_g + eps), or r_i - mean_g; a group of one has mean 0, std 1."""
    offs_i = tl.program_id(0) * BI + tl.arange(0, BI)
    valid_i = offs_i < n
    r_i = tl.load(rewards_ptr + offs_i, mask=valid_i, other=0.0).to(tl.float64)
    id_i = tl.load(ids_ptr + offs_i, mask=valid_i, other=0)
    count = tl.full([BI], 0.0, tl.float64)
    total = tl.full([BI], 0.0, tl.float64)
    for j0 in range(0, n, BJ):
        r_j, same = _same_group_tile(rewards_ptr, ids_ptr, id_i, j0, n, BJ)
        count += tile_sum(tl.where(same, 1.0, 0.0), 1)
        total += tile_sum(tl.where(same, r_j[None, :], 0.0), 1)
    single = count == 1.0
    mean = tl.where(single, 0.0, total / tl.maximum(count, 1.0))
    centred = r_i - mean
    if NORMALISE:
        sq = tl.full([BI], 0.0, tl.float64)
        for j0 in range(0, n, BJ):
            r_j, same = _same_group_tile(rewards_ptr, ids_ptr, id_i, j0, n, BJ)
            diff = r_j[None, :] - mean[:, None]  # same group, so the same mean
            sq += tile_sum(tl.where(same, diff * diff, 0.0), 1)
        std = tl.where(single, 1.0, tl.sqrt(sq / tl.maximum(count - 1.0, 1.0)))  # unbiased, as the reference
        centred = centred / (std + eps)
    tl.store(out_ptr + offs_i, centred.to(tl.float32), mask=valid_i)


def group_advantages_triton(rewards: Tensor, group_ids: Tensor, mode: str = "grpo") -> Tensor:
    """Per-sample advantage [N] fp32 from rewards [N] and integer group ids [N]; modes "grpo", "drgrpo"."""
    if mode not in MODES:
        raise ValueError(f"advantage mode {mode!r}; choose 'grpo' or 'drgrpo'")
    if rewards.shape != group_ids.shape or rewards.dim() != 1 or group_ids.is_floating_point():
        raise ValueError(
            f"rewards {tuple(rewards.shape)} and integer group_ids {tuple(group_ids.shape)} must be equal 1-D"
        )
    n = rewards.numel()
    out = torch.empty(n, device=rewards.device, dtype=torch.float32)
    if n:
        _group_advantages_kernel[(triton.cdiv(n, BLOCK_I),)](
            rewards.contiguous(),
            group_ids.contiguous(),
            out,
            n,
            EPS,
            NORMALISE=MODES[mode],
            BI=BLOCK_I,
            BJ=BLOCK_J,
        )
    return out
