"""This rank's tensor- and pipeline-parallel slice of a megatron state, and the full tensors back from the slices.

A full megatron state names layers globally (`decoder.layers.<i>`); a pipeline stage names its own
layers from 0, offset by its first layer's global index. Tensor-parallel layout is read from
megatron's own parameter attributes (`tensor_model_parallel`, `partition_dim`); the one tensor
whose shard is not a contiguous block is SwiGLU's `linear_fc1` ([gate; up]: each rank holds
[gate shard; up shard]).
"""

from __future__ import annotations

import re

import torch
import torch.distributed as dist
from megatron.core.models.gpt import GPTModel
from torch import Tensor

_LAYER = re.compile(r"^decoder\.layers\.(\d+)\.")
_EXTRA_STATE_SUFFIX = "_extra_state"
_STACKED_HALVES = "mlp.linear_fc1.weight"  # [gate; up] under a gated linear unit


def layer_offset(model: GPTModel) -> int:
    """Global index of this stage's first decoder layer."""
    return model.decoder.layers[0].layer_number - 1


def local_state(model: GPTModel, full_state: dict[str, Tensor], tp_group: dist.ProcessGroup) -> dict[str, Tensor]:
    """The slice of a full (globally named, unsharded) megatron state that this rank's `model` loads."""
    offset, rank, size = layer_offset(model), tp_group.rank(), tp_group.size()
    params = dict(model.named_parameters())
    out = {}
    for name in model.state_dict():
        if name.endswith(_EXTRA_STATE_SUFFIX):
            continue
        source = _global_name(name, offset)
        if source == "output_layer.weight" and model.share_embeddings_and_output_weights:
            source = "embedding.word_embeddings.weight"  # the last stage's copy of the tied embedding
        if source not in full_state:
            raise ValueError(f"missing tensor {source!r} in the state dict being sharded")
        out[name] = _tp_slice(full_state[source], name, params.get(name), rank, size)
    return out


def full_tensor(name: str, tensor: Tensor, param: Tensor | None, tp_group: dist.ProcessGroup) -> Tensor:
    """The unsharded tensor from every tensor-parallel rank's slice (a collective over `tp_group`)."""
    dim = _partition_dim(param)
    size = tp_group.size()
    if dim is None or size == 1:
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(size)]
    dist.all_gather(parts, tensor.contiguous(), group=tp_group)
    if name.endswith(_STACKED_HALVES):
        halves = [part.chunk(2, dim=0) for part in parts]
        return torch.cat([h[0] for h in halves] + [h[1] for h in halves], dim=0)
    return torch.cat(parts, dim=dim)


def _global_name(name: str, offset: int) -> str:
    return _LAYER.sub(lambda m: f"decoder.layers.{int(m.group(1)) + offset}.", name, count=1)


def _partition_dim(param: Tensor | None) -> int | None:
    """The dimension megatron splits across tensor-parallel ranks, or None for a replicated tensor."""
    if param is None or not getattr(param, "tensor_model_parallel", False):
        return None
    return param.partition_dim


def _tp_slice(full: Tensor, name: str, param: Tensor | None, rank: int, size: int) -> Tensor:
    dim = _partition_dim(param)
    if dim is None or size == 1:
        return full
    if name.endswith(_STACKED_HALVES):
        return torch.cat([half.chunk(size, dim=0)[rank] for half in full.chunk(2, dim=0)], dim=0)
    return full.chunk(size, dim=dim)[rank]
