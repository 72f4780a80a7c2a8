"""What megatron-core needs to run without CUDA: host attention, host RoPE tables, host RNG seeding.

Each accommodation replaces one CUDA-only spot on the path init -> build -> forward -> backward
(megatron-core 0.16); nothing here is used when CUDA is present.

- `SDPACoreAttention`: the local spec's `DotProductAttention` takes its score buffer from
  `parallel_state.get_global_memory_buffer()`, which allocates on `torch.cuda.current_device()`.
- `keep_rope_on_host`: `RotaryEmbedding.get_emb` moves a host `inv_freq` to
  `torch.cuda.current_device()` on first use.
- `seed_host_rng`: `model_parallel_cuda_manual_seed`'s default `CudaRNGStatesTracker.add` reads the
  CUDA generator; its `inference_rng_tracker=True` path is the nearest one that runs on the host.
- `on_host` gates `use_cpu_initialization=True` in the model config (megatron otherwise
  allocates parameters on `torch.cuda.current_device()`).

Not covered on the host: tp > 1 and pp > 1 (`tensor_parallel/mappings.py` and
`pipeline_parallel/p2p_communication.py` allocate buffers on `torch.cuda.current_device()`), activation recomputation (`tensor_parallel.checkpoint` saves CUDA
RNG state), packed sequences (THD) and dropout inside tensor-parallel regions (see `seed_host_rng`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from megatron.core.models.common.embeddings.rotary_pos_embedding import RotaryEmbedding
from megatron.core.models.gpt import GPTModel
from megatron.core.packed_seq_params import PackedSeqParams
from megatron.core.process_groups_config import ProcessGroupCollection
from megatron.core.tensor_parallel import model_parallel_cuda_manual_seed
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.transformer_config import TransformerConfig
from torch import Tensor


def on_host() -> bool:
    """True when megatron-core has to run on the CPU (no CUDA device)."""
    return not torch.cuda.is_available()


class SDPACoreAttention(MegatronModule):
    """Core attention on `F.scaled_dot_product_attention`, built by megatron's `SelfAttention`.

    Takes megatron's layout (query [sq, b, heads, hn], key/value [sk, b, groups, hn]) and returns
    [sq, b, heads * hn]; GQA groups map to heads as in `DotProductAttention` (repeat_interleave).
    Head counts are read from the tensors, so a tensor-parallel shard works unchanged.
    """

    def __init__(
        self,
        config: TransformerConfig,
        layer_number: int,
        attn_mask_type: AttnMaskType,
        attention_type: str,
        attention_dropout: float | None = None,
        softmax_scale: float | None = None,
        cp_comm_type: str | None = None,
        pg_collection: ProcessGroupCollection | None = None,
    ) -> None:
        super().__init__(config=config)
        if config.context_parallel_size != 1:
            raise ValueError(f"context_parallel_size={config.context_parallel_size}; SDPA core attention needs 1")
        if config.softmax_type != "vanilla":
            raise ValueError(f"softmax_type={config.softmax_type!r}; SDPA core attention supports 'vanilla'")
        self.attn_mask_type = attn_mask_type
        self.softmax_scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(config.kv_channels)
        self.dropout_p = config.attention_dropout if attention_dropout is None else attention_dropout

    def forward(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        attention_mask: Tensor | None,
        attn_mask_type: AttnMaskType | None = None,
        attention_bias: Tensor | None = None,
        packed_seq_params: PackedSeqParams | None = None,
    ) -> Tensor:
        """Attend; `attention_mask` follows megatron (True = masked out), else the mask type applies."""
        if attention_bias is not None or packed_seq_params is not None:
            raise ValueError("SDPA core attention supports neither attention_bias nor packed_seq_params")
        mask_type = self.attn_mask_type if attn_mask_type is None else attn_mask_type
        causal = attention_mask is None and mask_type == AttnMaskType.causal
        if causal and query.size(0) != key.size(0):
            raise ValueError(f"causal attention needs sq == sk, got {query.size(0)} and {key.size(0)}")
        q, k, v = (t.permute(1, 2, 0, 3) for t in (query, key, value))  # [b, heads or groups, s, hn]
        context = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=None if attention_mask is None else ~attention_mask,
            dropout_p=self.dropout_p if self.training else 0.0,
            is_causal=causal,
            scale=self.softmax_scale,
            enable_gqa=q.size(1) != k.size(1),
        )  # [b, heads, sq, hn]
        return context.permute(2, 0, 1, 3).reshape(query.size(0), query.size(1), -1)


class HostRotaryEmbedding(RotaryEmbedding):
    """Megatron's RoPE with its tables left on the host, non-interleaved (HF's rotate_half) layout."""

    def get_emb(self, max_seq_len: int, offset: int = 0) -> Tensor:
        """Angles [s, 1, 1, dim] for positions offset..offset+s-1, from megatron's own frequencies."""
        freqs = self.get_freqs_non_repeated(max_seq_len, offset)  # [s, dim / 2]
        return torch.cat((freqs, freqs), dim=-1)[:, None, None, :]


def keep_rope_on_host(model: GPTModel) -> None:
    """Retype the model's RotaryEmbedding in place so its tables stay on the host (no new state)."""
    if model.config.rotary_interleaved:
        raise ValueError("rotary_interleaved=True is not supported on the host")
    model.rotary_pos_emb.__class__ = HostRotaryEmbedding


def seed_host_rng(seed: int) -> None:
    """Seed torch's host generator and install megatron's RNG tracker without touching CUDA.

    The inference tracker's `fork()` is a no-op, so dropout in tensor-parallel regions draws from
    the default generator: harmless for HF decoders, whose dropouts are 0.
    """
    torch.manual_seed(seed)
    model_parallel_cuda_manual_seed(seed, inference_rng_tracker=True, force_reset_rng=True)
