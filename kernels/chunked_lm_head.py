"""The chunked lm-head pass: per-token log-prob and entropy from hidden × weight, gradient formed in the forward.

For each chunk of C tokens: one GEMM gives fp32 logits [C, V] (with a [C, V] gradient buffer in the
input dtype, the only vocab-wide memory; fp32 inputs reuse the logits), a Triton pass reduces them to
online-softmax statistics, the caller's loss turns log-prob and entropy into d(loss)/d(logp) and
d(loss)/d(entropy), a second Triton pass writes d(loss)/d(logits), and two GEMMs fold that into
d(hidden) and d(weight) (fp32 accumulators). Three GEMMs of 2·C·H·V each:
the 6·N·H·V floor, with no recomputation of the logits in the backward (Liger's FLCE choice).

Vocab-parallel: `weight` is this rank's contiguous [V / tp, H] shard (rank r holds rows r·V/tp onward,
Megatron's layout); max, sum-exp, entropy sum and target logit are all-reduced so log-probs, entropy,
the loss and d(hidden) equal the unsharded ones on every rank, and d(weight) is the local shard's.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

from erl_mega.kernels.online_softmax import logits_grad_, row_stats

# d(loss)/d(logp) [C] and d(loss)/d(entropy) [C] (None: the loss has no entropy term) for tokens
# start:end, given their log-probs [C] and entropies [C].
CoefFn = Callable[[int, int, Tensor, Tensor], tuple[Tensor, Tensor | None]]

# 2048 rows: 2048 × 151936 fp32 logits is 1.2 GB (+0.6 GB bf16 gradient), and the d(weight) GEMM has
# K = 2048, enough to stay compute-bound while it reads and writes the fp32 accumulator every chunk.
DEFAULT_CHUNK_ROWS = 2048
SUPPORTED_DTYPES = (torch.float32, torch.bfloat16)  # fp16 would underflow the 16-bit d(logits) buffer


@dataclass(frozen=True)
class LmHeadPass:
    """What one pass returns: per-token statistics and, when asked, the loss gradients."""

    logp: Tensor  # [N] fp32 log p(target) under softmax(logits / T)
    entropy: Tensor  # [N] fp32
    grad_hidden: Tensor | None  # [N, H] hidden's dtype
    grad_weight: Tensor | None  # [V_local, H] weight's dtype


def _mm_fp32(a: Tensor, b: Tensor, out: Tensor) -> Tensor:
    """out = a @ b in fp32; 16-bit inputs stay on tensor cores with an fp32 output on CUDA."""
    if a.is_cuda and a.dtype != torch.float32:
        return torch.mm(a, b, out_dtype=torch.float32, out=out)
    return torch.mm(a.float(), b.float(), out=out)


def _addmm_fp32_(acc: Tensor, a: Tensor, b: Tensor) -> None:
    """acc += a @ b with acc fp32 (the d(weight) accumulator across token chunks)."""
    if a.is_cuda and a.dtype != torch.float32:
        torch.addmm(acc, a, b, out_dtype=torch.float32, out=acc)
    else:
        acc.addmm_(a.float(), b.float())


def _combine(stats: Tensor, group: dist.ProcessGroup | None) -> tuple[Tensor, Tensor, Tensor]:
    """(lse, logp, entropy) [C] from partial row statistics [4, C], all-reduced over the vocab shards."""
    m, s, zs, target = stats
    if group is not None:
        peak = m.clone()
        dist.all_reduce(peak, op=dist.ReduceOp.MAX, group=group)
        scale = torch.exp(m - peak)
        # re-centre on the global max: sum e^(z-M)(z-M) = e^(m-M) (zs + (m - M) s)
        sums = torch.stack([s * scale, (zs + (m - peak) * s) * scale, target])
        dist.all_reduce(sums, group=group)
        m, (s, zs, target) = peak, sums
    log_s = torch.log(s)
    lse = m + log_s
    return lse, target - lse, log_s - zs / s


def lm_head_pass(
    hidden: Tensor,
    weight: Tensor,
    targets: Tensor,
    *,
    temperature: float = 1.0,
    coef_fn: CoefFn | None = None,
    need_grad_hidden: bool = False,
    need_grad_weight: bool = False,
    group: dist.ProcessGroup | None = None,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
) -> LmHeadPass:
    """Log-prob and entropy of targets [N] under softmax(hidden [N, H] @ weight.T [H, V] / T), chunked.

    With `coef_fn`, the loss it defines is differentiated in the same pass; gradients are returned
    for the inputs asked for (unscaled: d(loss)/d(input) for a loss gradient of 1).
    """
    if hidden.dtype not in SUPPORTED_DTYPES or weight.dtype != hidden.dtype:
        raise ValueError(f"hidden {hidden.dtype} and weight {weight.dtype} must share one of {SUPPORTED_DTYPES}")
    if temperature <= 0 or chunk_rows <= 0:
        raise ValueError(f"temperature={temperature} and chunk_rows={chunk_rows} must be > 0")
    tokens, width = hidden.shape
    vocab = weight.shape[0]
    if weight.shape[1] != width or targets.shape != (tokens,):
        raise ValueError(f"hidden {tuple(hidden.shape)}, weight {tuple(weight.shape)}, targets {tuple(targets.shape)}")
    vocab_start = dist.get_rank(group) * vocab if group is not None else 0
    inv_temp = 1.0 / temperature
    hidden = hidden.contiguous()
    targets = targets.contiguous()
    logp = torch.empty(tokens, device=hidden.device, dtype=torch.float32)
    entropy = torch.empty_like(logp)
    grad_hidden = torch.zeros(tokens, width, device=hidden.device, dtype=torch.float32) if need_grad_hidden else None
    grad_weight = torch.zeros(vocab, width, device=weight.device, dtype=torch.float32) if need_grad_weight else None
    weight_t = weight.t()
    buf = torch.empty(max(1, min(tokens, chunk_rows)), vocab, device=hidden.device, dtype=torch.float32)
    need_grad = coef_fn is not None and (need_grad_hidden or need_grad_weight)
    grad_buf = buf if hidden.dtype == torch.float32 or not need_grad else torch.empty_like(buf, dtype=hidden.dtype)
    for start in range(0, tokens, buf.shape[0]):
        end = min(tokens, start + buf.shape[0])
        x, t = hidden[start:end], targets[start:end]
        logits = _mm_fp32(x, weight_t, out=buf[: end - start])  # [C, V]
        lse, logp[start:end], entropy[start:end] = _combine(row_stats(logits, t, vocab_start, inv_temp), group)
        if coef_fn is None:
            continue
        g_logp, g_entropy = coef_fn(start, end, logp[start:end], entropy[start:end])
        if not need_grad:
            continue
        grad = logits_grad_(
            logits, grad_buf[: end - start], t, lse, entropy[start:end], g_logp, g_entropy, vocab_start, inv_temp
        )
        if grad_hidden is not None:
            _mm_fp32(grad, weight, out=grad_hidden[start:end])
        if grad_weight is not None:
            _addmm_fp32_(grad_weight, grad.t(), x)
    if grad_hidden is not None and group is not None:
        dist.all_reduce(grad_hidden, group=group)
    return LmHeadPass(
        logp=logp,
        entropy=entropy,
        grad_hidden=grad_hidden.to(hidden.dtype) if grad_hidden is not None else None,
        grad_weight=grad_weight.to(weight.dtype) if grad_weight is not None else None,
    )


def scaled_saved_grads(ctx, grad_loss: Tensor, num_inputs: int) -> tuple[Tensor | None, ...]:
    """Backward of a loss whose d(hidden), d(weight) were formed in the forward and saved on `ctx`.

    Scales them in place (one backward per forward) and returns None for the other inputs.
    """
    grad_hidden, grad_weight = ctx.saved_tensors
    scaled = tuple(g.mul_(grad_loss) if g is not None else None for g in (grad_hidden, grad_weight))
    return scaled + (None,) * (num_inputs - 2)
