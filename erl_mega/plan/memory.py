"""Per-GPU bytes of the trainer (megatron-core, distributed optimizer) and of the rollout engine."""

from __future__ import annotations

from dataclasses import dataclass

from erl_mega.plan.params import stage_params
from erl_mega.plan.shape import ModelShape

DTYPE_BYTES = {"bfloat16": 2, "float32": 4}
GRAD_BYTES = 4  # the trainer reduces gradients in fp32 (DistributedDataParallelConfig(grad_reduce_in_fp32=True))
LOSS_CHUNK_ROWS = 2048  # the fused loss kernel's chunk (DEFAULT_CHUNK_ROWS in kernels/chunked_lm_head.py)


@dataclass(frozen=True)
class TrainerMemory:
    """Bytes on the busiest pipeline rank."""

    params: int
    grads: int
    main_weights: int  # fp32 copy of bf16 params, sharded over DP
    optimizer: int  # Adam exp_avg + exp_avg_sq in fp32, sharded over DP
    activations: int
    loss_workspace: int
    logits_avoided: int  # what [tokens, vocab / tp] fp32 logits would have taken

    @property
    def static(self) -> int:
        return self.params + self.grads + self.main_weights + self.optimizer

    @property
    def peak(self) -> int:
        return self.static + self.activations + self.loss_workspace


def state_bytes(m: ModelShape, tp: int, pp: int, dp: int, stage: int, params_dtype: str) -> dict[str, int]:
    """Parameters, gradients, fp32 main weights and Adam moments on one rank of pipeline stage `stage`."""
    n = stage_params(m, tp, pp, stage)
    main = 0 if params_dtype == "float32" else 4 * n // dp  # fp32 params are their own main weights
    return {"params": n * DTYPE_BYTES[params_dtype], "grads": n * GRAD_BYTES, "main_weights": main,
            "optimizer": 2 * 4 * n // dp}


def layer_activation_bytes(m: ModelShape, seq: int, mbs: int, tp: int, recompute: str, dtype_bytes: int = 2) -> int:
    """Bytes one layer keeps for backward per micro-batch, counted as megatron-core with our layer spec saves them.

    Measured against autograd's saved tensors of a GPTModel forward at TP 1 and 2 (test_plan_activations.py,
    test_plan_memory.py):
    each RMSNorm keeps its input, x * rstd and rstd, its output is the next linear's input (replicated
    over TP, no sequence parallelism); attention keeps the fused qkv output (v is a view of it), q and k
    after RoPE, SDPA's output and log-sum-exp (flash / efficient kernels: no [heads, s, s] scores); the
    SwiGLU MLP keeps [gate; up], silu(gate), a copy of up and the product; RoPE's cos / sin for q and k.
    Qwen3's q/k norms add both normalised heads, their rstd and (when q's heads are not adjacent in the
    fused qkv) q's input. Selective recompute (megatron's core-attention checkpoint) drops only the
    log-sum-exp; full recompute keeps the layer's input. Fused GPU RMSNorm keeps about 2 * hidden fewer
    elements per token: an upper bound there.
    """
    tokens = seq * mbs
    if recompute == "full":
        return dtype_bytes * tokens * m.hidden
    heads, kv, ffn = m.heads // tp, m.kv_heads // tp, m.ffn // tp
    norms = 2 * (3 * m.hidden + 1)
    qkv_out = (heads + 2 * kv) * m.head_dim
    q_k_out = (2 * heads + kv) * m.head_dim  # q and k after RoPE, SDPA's output
    attention = qkv_out + q_k_out + (heads if recompute == "none" else 0)  # + log-sum-exp per head
    if m.qk_norm:  # q's input is a copy unless its heads are adjacent in the fused qkv (one KV group, or MHA)
        q_copy = heads if kv > 1 and heads > kv else 0
        attention += (q_copy + heads + kv) * m.head_dim + heads + kv
    rope = 4 * seq * m.head_dim  # cos and sin for q and k, one table per micro-batch
    return dtype_bytes * (tokens * (norms + attention + 5 * ffn) + rope)


def in_flight_layers(layers: int, pp: int, vpp: int, micro_batches: int, rank: int = 0) -> float:
    """Layer-micro-batches of activations pipeline rank `rank` holds at its peak (megatron's 1F1B / interleaved warm-up)."""
    if pp == 1:
        return layers
    if vpp == 1:
        return min(pp - rank, micro_batches) * layers / pp
    warmup = min((pp - rank - 1) * 2 + (vpp - 1) * pp + 1, micro_batches * vpp)
    return warmup * layers / (pp * vpp)


def loss_workspace_bytes(m: ModelShape, tokens: int, tp: int, params_dtype: str) -> int:
    """The fused lm-head loss kernel's memory (kernels/chunked_lm_head.py) on the last pipeline stage.

    Per chunk of rows: fp32 logits [C, V / tp] and a d(logits) buffer in the input dtype (fp32 reuses
    the logits); gradients formed in the forward and kept for the backward: d(hidden) fp32 [tokens, H]
    and d(weight) fp32 [V / tp, H].
    """
    vocab = m.vocab // tp
    chunk = min(LOSS_CHUNK_ROWS, tokens)
    grad_buffer = 0 if params_dtype == "float32" else DTYPE_BYTES[params_dtype]
    return chunk * vocab * (4 + grad_buffer) + 4 * tokens * m.hidden + 4 * vocab * m.hidden


def trainer_memory(m: ModelShape, tp: int, pp: int, dp: int, vpp: int, seq: int, mbs: int,
                   micro_batches: int, recompute: str, params_dtype: str) -> TrainerMemory:
    """The busier of the first pipeline rank (most micro-batches in flight, the embedding) and the last (head, loss)."""
    act_bytes, tokens = DTYPE_BYTES[params_dtype], seq * mbs
    per_layer = layer_activation_bytes(m, seq, mbs, tp, recompute, act_bytes)
    # full recompute: plus one layer's whole working set while backward recomputes it
    recomputing = layer_activation_bytes(m, seq, mbs, tp, "none", act_bytes) if recompute == "full" else 0
    ranks = []
    for rank in sorted({0, pp - 1}):
        acts = per_layer * in_flight_layers(m.layers, pp, vpp, micro_batches, rank) + recomputing
        loss = loss_workspace_bytes(m, tokens, tp, params_dtype) if rank == pp - 1 else 0
        ranks.append(TrainerMemory(**state_bytes(m, tp, pp, dp, rank, params_dtype), activations=int(acts),
                                   loss_workspace=loss, logits_avoided=4 * tokens * m.vocab // tp))
    return max(ranks, key=lambda t: t.peak)


def kv_bytes_per_token(m: ModelShape, rollout_tp: int) -> int:
    """bf16 K and V of one token on one GPU of a rollout engine (KV heads replicate once TP exceeds them)."""
    kv_heads_per_gpu = max(1, m.kv_heads // rollout_tp)
    return 2 * 2 * m.layers * kv_heads_per_gpu * m.head_dim


@dataclass(frozen=True)
class RolloutMemory:
    weights: int
    kv_cache: int
    seqs_fit: int  # sequences of the longest rollout the KV cache holds at once, per engine


def rollout_memory(m: ModelShape, total_params: int, rollout_tp: int, gpu_bytes: float,
                   fraction: float, seq: int) -> RolloutMemory:
    weights = 2 * total_params // rollout_tp
    kv = max(0, int(fraction * gpu_bytes) - weights)
    return RolloutMemory(weights, kv, kv // (kv_bytes_per_token(m, rollout_tp) * seq))
