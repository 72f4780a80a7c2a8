"""Parameter counts per layer, per pipeline stage and TP shard, laid out as megatron-core's GPTModel holds them."""

from __future__ import annotations

from erl_mega.plan.shape import ModelShape


def layer_params(m: ModelShape, tp: int = 1) -> int:
    """One decoder layer's parameters on a TP rank: projections sharded, norms replicated."""
    qkv_out = (m.heads + 2 * m.kv_heads) * m.head_dim
    sharded = m.hidden * qkv_out + m.heads * m.head_dim * m.hidden + 3 * m.hidden * m.ffn
    sharded += qkv_out if m.qkv_bias else 0
    replicated = 2 * m.hidden + (2 * m.head_dim if m.qk_norm else 0)
    return sharded // tp + replicated


def stage_params(m: ModelShape, tp: int, pp: int, stage: int) -> int:
    """Pipeline rank `stage`'s parameters on one TP rank (its share of the layers, embedding first, head last)."""
    count = layer_params(m, tp) * (m.layers // pp)
    embedding = m.vocab * m.hidden // tp
    if stage == 0:
        count += embedding
    if stage == pp - 1:
        # final norm; an untied head, or under pp > 1 the last stage's copy of a tied embedding
        count += m.hidden + (embedding if not m.tied or pp > 1 else 0)
    return count


def total_params(m: ModelShape) -> int:
    return stage_params(m, 1, 1, 0)


def embedding_params(m: ModelShape) -> int:
    return m.vocab * m.hidden
