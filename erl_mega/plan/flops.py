"""FLOPs per token of a dense GQA / SwiGLU decoder: matmuls (2 per weight) plus attention scores and values."""

from __future__ import annotations

from erl_mega.plan.shape import ModelShape

PASSES = {"none": 3, "selective": 3, "full": 4}  # forward + backward (2x), + a recomputed forward


def matmul_flops_per_token(m: ModelShape) -> int:
    """Forward FLOPs of every weight matmul (layers and lm-head; the embedding is a lookup)."""
    qkv_out = (m.heads + 2 * m.kv_heads) * m.head_dim
    per_layer = m.hidden * qkv_out + m.heads * m.head_dim * m.hidden + 3 * m.hidden * m.ffn
    return 2 * (m.layers * per_layer + m.vocab * m.hidden)


def attention_flops_per_token(m: ModelShape, context: float) -> float:
    """Forward FLOPs of QK^T and AV for a query attending to `context` keys, over all layers."""
    return 4 * m.layers * m.heads * m.head_dim * context


def forward_flops(m: ModelShape, seq: int) -> float:
    """Forward FLOPs of one causal sequence of `seq` tokens (query i sees i + 1 keys)."""
    return seq * (matmul_flops_per_token(m) + attention_flops_per_token(m, (seq + 1) / 2))


def train_flops(m: ModelShape, seq: int, recompute: str) -> float:
    return PASSES[recompute] * forward_flops(m, seq)
