"""Triton row kernels over a chunk of fp32 logits: online softmax statistics, and d(loss)/d(logits).

Both stream [ROWS, BLOCK_V] tiles across the vocab, so their cost is one read (stats) or one read plus
one write (gradient) of the chunk: the memory-bound share of the fused lm-head pass (the GEMMs are
the rest).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from erl_mega.kernels.tile_reductions import tile_max, tile_sum

# [4, 1024] fp32 tiles with 8 warps: 16 values per thread and a few hundred programs per 2048-row
# chunk. One fixed config, no autotune: the gradient kernel may write over its input (fp32), so
# autotune reruns would read their own output (and the interpreter cannot autotune).
ROWS = 4
BLOCK_V = 1024
NUM_WARPS = 8


@triton.jit
def _row_stats_kernel(
    logits_ptr,
    targets_ptr,
    stats_ptr,
    rows,
    vocab,
    vocab_start,
    stride_row,
    inv_temp,
    R: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """stats[:, row] = (max m, sum exp(z - m), sum exp(z - m)·(z - m), target z) of z = logits / T."""
    offs_r = tl.program_id(0) * R + tl.arange(0, R)
    live_r = offs_r < rows
    base = logits_ptr + offs_r.to(tl.int64)[:, None] * stride_row
    # per-lane online softmax, reduced once per row at the end; the running max starts at -inf,
    # not 0 (logits may all be negative), and lanes that saw nothing yet are kept finite by `safe`
    m = tl.full([R, BLOCK], float("-inf"), tl.float32)
    s = tl.full([R, BLOCK], 0.0, tl.float32)
    zs = tl.full([R, BLOCK], 0.0, tl.float32)
    for v0 in range(0, vocab, BLOCK):
        offs_v = v0 + tl.arange(0, BLOCK)
        valid = live_r[:, None] & (offs_v[None, :] < vocab)
        z = tl.load(base + offs_v[None, :], mask=valid, other=float("-inf")).to(tl.float32) * inv_temp
        m_new = tl.maximum(m, z)
        safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp(m - safe)
        e = tl.exp(z - safe)
        zs = alpha * (zs + tl.where(s > 0, m - safe, 0.0) * s) + e * tl.where(valid, z - safe, 0.0)
        s = alpha * s + e
        m = m_new
    row_max = tile_max(m, 1)
    row_max = tl.where(row_max == float("-inf"), 0.0, row_max)  # only rows past the end have no lanes
    scale = tl.exp(m - row_max[:, None])
    row_s = tile_sum(s * scale, 1)
    row_zs = tile_sum(scale * (zs + tl.where(s > 0, m - row_max[:, None], 0.0) * s), 1)
    t = tl.load(targets_ptr + offs_r, mask=live_r, other=0) - vocab_start
    owned = live_r & (t >= 0) & (t < vocab)  # vocab-parallel: only the shard holding the target adds it
    tz = tl.load(logits_ptr + offs_r.to(tl.int64) * stride_row + t, mask=owned, other=0.0).to(tl.float32) * inv_temp
    tl.store(stats_ptr + offs_r, row_max, mask=live_r)
    tl.store(stats_ptr + rows + offs_r, row_s, mask=live_r)
    tl.store(stats_ptr + 2 * rows + offs_r, row_zs, mask=live_r)
    tl.store(stats_ptr + 3 * rows + offs_r, tz, mask=live_r)


@triton.jit
def _logits_grad_kernel(
    logits_ptr,
    grad_ptr,
    targets_ptr,
    lse_ptr,
    entropy_ptr,
    g_logp_ptr,
    g_entropy_ptr,
    rows,
    vocab,
    vocab_start,
    stride_row,
    stride_grad,
    inv_temp,
    HAS_ENTROPY_GRAD: tl.constexpr,
    R: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """grad[row] = d(loss)/d(logits[row]) from g_logp = dL/dlogp and g_entropy = dL/dH of that token.

    dlogp/dz_k = [k = target] - p_k and dH/dz_k = -p_k (log p_k + H), both times 1/T for the logits.
    grad may be logits itself when both are fp32 (each thread rewrites exactly what it read).
    """
    offs_r = tl.program_id(0) * R + tl.arange(0, R)
    live_r = offs_r < rows
    g_logp = tl.load(g_logp_ptr + offs_r, mask=live_r, other=0.0)[:, None]
    active = g_logp != 0.0  # masked tokens: skip the read, write zeros
    if HAS_ENTROPY_GRAD:
        g_entropy = tl.load(g_entropy_ptr + offs_r, mask=live_r, other=0.0)[:, None]
        entropy = tl.load(entropy_ptr + offs_r, mask=live_r, other=0.0)[:, None]
        active = active | (g_entropy != 0.0)
    # inactive rows read z = 0 and see lse = 0, so p = 1 stays finite and times coef = 0 writes zeros
    lse = tl.where(active, tl.load(lse_ptr + offs_r, mask=live_r, other=0.0)[:, None], 0.0)
    t = (tl.load(targets_ptr + offs_r, mask=live_r, other=0) - vocab_start)[:, None]
    row_in = offs_r.to(tl.int64)[:, None]
    for v0 in range(0, vocab, BLOCK):
        offs_v = (v0 + tl.arange(0, BLOCK))[None, :]
        valid = live_r[:, None] & (offs_v < vocab)
        z = tl.load(logits_ptr + row_in * stride_row + offs_v, mask=valid & active, other=0.0).to(tl.float32)
        logp = z * inv_temp - lse
        p = tl.exp(logp)
        if HAS_ENTROPY_GRAD:
            coef = g_logp + g_entropy * (logp + entropy)
        else:
            coef = g_logp
        dz = tl.where(offs_v == t, g_logp, 0.0) - p * coef
        tl.store(grad_ptr + row_in * stride_grad + offs_v, (dz * inv_temp).to(grad_ptr.dtype.element_ty), mask=valid)


def _block(vocab: int) -> int:
    return min(BLOCK_V, triton.next_power_of_2(vocab))


def row_stats(logits: Tensor, targets: Tensor, vocab_start: int, inv_temp: float) -> Tensor:
    """Per-row partial softmax statistics [4, C] (max, sum-exp, centred z-sum, target z) of logits [C, V] fp32."""
    rows, vocab = logits.shape
    stats = torch.empty(4, rows, device=logits.device, dtype=torch.float32)
    _row_stats_kernel[(triton.cdiv(rows, ROWS),)](
        logits,
        targets,
        stats,
        rows,
        vocab,
        vocab_start,
        logits.stride(0),
        inv_temp,
        R=ROWS,
        BLOCK=_block(vocab),
        num_warps=NUM_WARPS,
    )
    return stats


def logits_grad_(
    logits: Tensor,
    grad: Tensor,
    targets: Tensor,
    lse: Tensor,
    entropy: Tensor,
    g_logp: Tensor,
    g_entropy: Tensor | None,
    vocab_start: int,
    inv_temp: float,
) -> Tensor:
    """Write d(loss)/d(logits) of fp32 logits [C, V] into grad [C, V] (any float dtype) and return it.

    grad may be logits itself (fp32): each element is read and rewritten by the same thread. A 16-bit
    grad must be its own buffer: packed over the fp32 rows, one warp would overwrite values another
    warp has not read yet.
    """
    rows, vocab = logits.shape
    has_entropy_grad = g_entropy is not None
    _logits_grad_kernel[(triton.cdiv(rows, ROWS),)](
        logits,
        grad,
        targets,
        lse,
        entropy,
        g_logp,
        g_entropy if has_entropy_grad else g_logp,
        rows,
        vocab,
        vocab_start,
        logits.stride(0),
        grad.stride(0),
        inv_temp,
        HAS_ENTROPY_GRAD=has_entropy_grad,
        R=ROWS,
        BLOCK=_block(vocab),
        num_warps=NUM_WARPS,
    )
    return grad
