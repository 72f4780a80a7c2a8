"""What megatron-core needs to run without CUDA: host devices, host attention, host RoPE tables, host RNG.

Each accommodation replaces one CUDA-only spot on the path init -> build -> forward -> backward ->
optimizer step (megatron-core 0.16); on CUDA only `SDPACoreAttention` is used.

- `host_devices`: megatron allocates communication buffers, pipeline shape tensors, gradient buffers
  and optimizer scalars on `torch.cuda.current_device()` or `device="cuda"`
  (`tensor_parallel/mappings.py::_gather_along_last_dim` is where TP > 1 first died: gloo itself
  runs `all_gather_into_tensor` / `reduce_scatter_tensor` fine in torch 2.13), syncs with
  `torch.cuda.synchronize()` after batched p2p, and checks dtypes by CUDA type strings
  (`clip_grads.py`: `param.grad.type() == 'torch.cuda.FloatTensor'`; `distrib_optimizer.py` and
  `Float16OptimizerWithFloat16Params` likewise). Within it those requests land on the host.
- `SDPACoreAttention`: the local spec's `DotProductAttention` takes its score buffer from
  `parallel_state.get_global_memory_buffer()` and has no packed-sequence (THD) path; SDPA with a
  causal document mask covers both. It is the core attention on GPU too (`gpt_layer_spec`): SDPA's
  flash / efficient kernels instead of materialised scores, and the same THD path.
- `keep_rope_on_host`: `RotaryEmbedding.get_emb` moves a host `inv_freq` to
  `torch.cuda.current_device()` on first use.
- `seed_host_rng`: `model_parallel_cuda_manual_seed`'s default `CudaRNGStatesTracker.add` reads the
  CUDA generator; its `inference_rng_tracker=True` path is the nearest one that runs on the host.
- `on_host` gates `use_cpu_initialization=True` in the model config (megatron otherwise
  allocates parameters on `torch.cuda.current_device()`).

Not covered on the host: the overlapped grad reduce / param gather (`overlap_grad_reduce`,
`overlap_param_gather` run on `torch.cuda.Stream`s), activation recomputation
(`tensor_parallel.checkpoint` saves CUDA RNG state) and dropout inside tensor-parallel regions
(see `seed_host_rng`).
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Any, Iterator

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
from torch.overrides import TorchFunctionMode


def on_host() -> bool:
    """True when megatron-core has to run on the CPU (no CUDA device)."""
    return not torch.cuda.is_available()


# The host tensor types megatron's dtype checks accept under their CUDA names.
_CUDA_TYPE_NAMES = {
    "torch.FloatTensor": "torch.cuda.FloatTensor",
    "torch.HalfTensor": "torch.cuda.HalfTensor",
    "torch.BFloat16Tensor": "torch.cuda.BFloat16Tensor",
}


def _names_cuda(device: Any) -> bool:
    """Whether a device argument means a CUDA device (a bare int is a CUDA ordinal)."""
    if isinstance(device, bool):
        return False
    if isinstance(device, int):
        return True
    if isinstance(device, str):
        return device.startswith("cuda")
    return isinstance(device, torch.device) and device.type == "cuda"


class _HostDevices(TorchFunctionMode):
    """Sends megatron's CUDA placements to the host and answers its CUDA type-string checks."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if _names_cuda(kwargs.get("device")):
            kwargs = kwargs | {"device": "cpu"}
        if func is Tensor.cuda:
            return args[0]
        if func is Tensor.to and len(args) > 1 and _names_cuda(args[1]):
            args = (args[0], "cpu", *args[2:])
        if func is Tensor.type and len(args) == 1 and not kwargs:
            name = func(*args)
            return _CUDA_TYPE_NAMES.get(name, name)
        return func(*args, **kwargs)


@contextmanager
def host_devices() -> Iterator[None]:
    """Within: megatron's CUDA tensors are host tensors, `torch.cuda.current_device()` is 0 (remapped)
    and `torch.cuda.synchronize()` has nothing to wait for."""
    saved = torch.cuda.current_device, torch.cuda.synchronize
    torch.cuda.current_device = lambda: 0
    torch.cuda.synchronize = lambda device=None: None
    try:
        with _HostDevices():
            yield
    finally:
        torch.cuda.current_device, torch.cuda.synchronize = saved


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
        """Attend; `attention_mask` follows megatron (True = masked out), else the mask type applies.

        Packed sequences (THD: query [t, heads, hn]) attend causally within their own sequence only.
        """
        if attention_bias is not None:
            raise ValueError("SDPA core attention does not support attention_bias")
        mask_type = self.attn_mask_type if attn_mask_type is None else attn_mask_type
        if packed_seq_params is not None:
            if packed_seq_params.qkv_format != "thd" or mask_type != AttnMaskType.causal:
                raise ValueError("SDPA core attention packs only causal THD sequences")
            query, key, value = (t.unsqueeze(1) for t in (query, key, value))  # [t, 1, heads, hn]
            attention_mask = ~_causal_document_mask(packed_seq_params.cu_seqlens_q, query.size(0))
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


def _causal_document_mask(cu_seqlens: Tensor, tokens: int) -> Tensor:
    """[tokens, tokens] bool, True where query i may see key j: same packed sequence and j <= i."""
    positions = torch.arange(tokens, device=cu_seqlens.device)
    doc = torch.searchsorted(cu_seqlens[1:].to(positions.dtype), positions, right=True)
    return (doc[:, None] == doc[None, :]) & (positions[None, :] <= positions[:, None])


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
