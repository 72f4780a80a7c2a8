"""HF <-> megatron-core weights for Llama / Qwen2 / Qwen3: whole state dicts, sharded loads, or streamed per layer.

Megatron names are those of `build_gpt_model` (local layer spec: norms outside the linears);
`_extra_state` entries are dropped on the way out and filled back by megatron's load hook.
"""

from __future__ import annotations

from typing import Callable, Iterable, Iterator

import torch
import torch.distributed as dist
from megatron.core.models.gpt import GPTModel
from torch import Tensor
from transformers import PreTrainedConfig

from erl_mega.weights.buckets import NamedTensors
from erl_mega.train.megatron_model import HFArch, hf_arch
from erl_mega.train.shard import full_tensor, local_state

_EXTRA_STATE_SUFFIX = "_extra_state"

_PRE_NAMES = {"embedding.word_embeddings.weight": "model.embed_tokens.weight"}  # megatron -> HF

# megatron -> HF names inside one decoder layer, for tensors that convert one to one.
_LAYER_NAMES = {
    "input_layernorm.weight": "input_layernorm.weight",
    "self_attention.linear_proj.weight": "self_attn.o_proj.weight",
    "pre_mlp_layernorm.weight": "post_attention_layernorm.weight",
    "mlp.linear_fc2.weight": "mlp.down_proj.weight",
}
_QK_NORM_NAMES = {
    "self_attention.q_layernorm.weight": "self_attn.q_norm.weight",
    "self_attention.k_layernorm.weight": "self_attn.k_norm.weight",
}


def hf_to_megatron(hf_state: dict[str, Tensor], hf_config: PreTrainedConfig) -> dict[str, Tensor]:
    """An HF state dict as one `build_gpt_model(hf_config).load_state_dict(strict=True)` accepts."""
    arch = hf_arch(hf_config)
    hf = dict(hf_state)
    if arch.tied_embeddings:
        hf.pop("lm_head.weight", None)  # HF's state_dict() lists the tied head under both names
    out = {mc: _pop(hf, name) for mc, name in _PRE_NAMES.items()}
    for i in range(arch.num_layers):
        layer = _layer_to_megatron(hf, f"model.layers.{i}.", arch)
        out.update({f"decoder.layers.{i}.{name}": tensor for name, tensor in layer.items()})
    out.update({mc: _pop(hf, name) for mc, name in _post_names(arch).items()})
    _require_consumed(hf, "HF")
    return out


def megatron_to_hf(mcore_state: dict[str, Tensor], hf_config: PreTrainedConfig) -> dict[str, Tensor]:
    """The exact inverse of `hf_to_megatron`; a tied model has no `lm_head.weight`, as HF saves it."""
    arch = hf_arch(hf_config)
    mc = _without_extra_state(mcore_state)
    out = {name: _pop(mc, key) for key, name in _PRE_NAMES.items()}
    for i in range(arch.num_layers):
        out.update(_layer_to_hf(mc, f"decoder.layers.{i}.", f"model.layers.{i}.", arch))
    out.update({name: _pop(mc, key) for key, name in _post_names(arch).items()})
    _require_consumed(mc, "megatron")
    return out


def load_hf_weights(model: GPTModel, hf_state: dict[str, Tensor], hf_config: PreTrainedConfig) -> None:
    """Load an HF state dict into this rank's tensor- and pipeline-parallel slice of the model (strict)."""
    full = hf_to_megatron(hf_state, hf_config)
    model.load_state_dict(local_state(model, full, model.pg_collection.tp), strict=True)


def iter_hf_buckets(
    model: GPTModel | Iterable[GPTModel], hf_config: PreTrainedConfig, bucket_bytes: int
) -> Iterator[NamedTensors]:
    """Stream the model's weights as HF-named full tensors in buckets of at most `bucket_bytes`.

    `model` is one GPTModel or its virtual-stage chunks in order. Order of the stream: embedding,
    layers one by one, final norm, head. A tensor larger than the bound travels alone. Under model
    parallelism this is a collective of the model's TP and PP groups: each section (embedding, one
    layer, norm and head) is gathered across TP on the stage that holds it and broadcast along PP,
    so every rank yields the same stream and no rank ever holds more than one layer beyond its own
    slice. Tensors may share storage with the parameters, so a receiver
    copies them before the next optimizer step.
    """
    if bucket_bytes < 1:
        raise ValueError(f"bucket_bytes={bucket_bytes}; must be >= 1")
    bucket: NamedTensors = []
    size = 0
    chunks = [model] if isinstance(model, GPTModel) else list(model)
    for name, tensor in _hf_tensors(chunks, hf_arch(hf_config)):
        nbytes = tensor.numel() * tensor.element_size()
        if bucket and size + nbytes > bucket_bytes:
            yield bucket
            bucket, size = [], 0
        bucket.append((name, tensor))
        size += nbytes
    if bucket:
        yield bucket


def _hf_tensors(chunks: list[GPTModel], arch: HFArch) -> Iterator[tuple[str, Tensor]]:
    """HF-named full tensors, one model section at a time, from whichever pipeline stage holds it."""
    pp = chunks[0].pg_collection.pp
    if pp.size() == 1:
        for chunk in chunks:
            for section in _local_sections(chunk, arch):
                yield from section()
        return
    device = next(chunks[0].parameters()).device
    for chunk in chunks:  # virtual stage v on every pipeline rank, then v + 1: the global layer order
        sections = _local_sections(chunk, arch)
        for stage in range(pp.size()):
            mine = stage == pp.rank()
            count = [len(sections) if mine else 0]
            dist.broadcast_object_list(count, group=pp, group_src=stage)
            for i in range(count[0]):
                yield from _broadcast_section(sections[i]() if mine else None, stage, pp, device)


def _local_sections(model: GPTModel, arch: HFArch) -> list[Callable[[], list[tuple[str, Tensor]]]]:
    """This stage's sections in order, each a call that gathers its HF-named tensors across TP."""
    tp, params = model.pg_collection.tp, dict(model.named_parameters())

    def full(key: str, tensor: Tensor) -> Tensor:
        return full_tensor(key, tensor.detach(), params.get(key), tp)

    def pre() -> list[tuple[str, Tensor]]:
        return [(name, full(key, model.get_parameter(key))) for key, name in _PRE_NAMES.items()]

    def layer(i: int) -> Callable[[], list[tuple[str, Tensor]]]:
        def section() -> list[tuple[str, Tensor]]:
            layer = model.decoder.layers[i]
            state = {k: full(f"decoder.layers.{i}.{k}", t) for k, t in _without_extra_state(layer.state_dict()).items()}
            # layer_number is global and 1-based, so pipeline stages name their layers correctly.
            named = _layer_to_hf(state, "", f"model.layers.{layer.layer_number - 1}.", arch)
            _require_consumed(state, "megatron")
            return list(named.items())

        return section

    def post() -> list[tuple[str, Tensor]]:
        return [(name, full(key, model.get_parameter(key))) for key, name in _post_names(arch).items()]

    sections = [pre] if model.pre_process else []
    sections += [layer(i) for i in range(len(model.decoder.layers))]
    return sections + [post] if model.post_process else sections


def _broadcast_section(
    named: list[tuple[str, Tensor]] | None, stage: int, pp: dist.ProcessGroup, device: torch.device
) -> list[tuple[str, Tensor]]:
    """One section's tensors from pipeline stage `stage` to every stage (names and shapes first)."""
    meta = [None if named is None else [(name, t.shape, t.dtype) for name, t in named]]
    dist.broadcast_object_list(meta, group=pp, group_src=stage)
    if named is None:
        named = [(name, torch.empty(shape, dtype=dtype, device=device)) for name, shape, dtype in meta[0]]
    for _, tensor in named:
        dist.broadcast(tensor, group=pp, group_src=stage)
    return named


def _layer_to_megatron(hf: dict[str, Tensor], prefix: str, arch: HFArch) -> dict[str, Tensor]:
    """Pop one HF layer's tensors from `hf`; return them fused and under megatron's layer-local names."""
    out = {mc: _pop(hf, prefix + name) for mc, name in _layer_names(arch).items()}
    for kind in _qkv_kinds(arch):
        q, k, v = (_pop(hf, f"{prefix}self_attn.{p}_proj.{kind}") for p in "qkv")
        out[f"self_attention.linear_qkv.{kind}"] = _fuse_qkv(q, k, v, arch)
    gate, up = _pop(hf, prefix + "mlp.gate_proj.weight"), _pop(hf, prefix + "mlp.up_proj.weight")
    out["mlp.linear_fc1.weight"] = torch.cat([gate, up])
    return out


def _layer_to_hf(mc: dict[str, Tensor], prefix: str, hf_prefix: str, arch: HFArch) -> dict[str, Tensor]:
    """Pop one megatron layer's tensors (keys under `prefix`) from `mc`; return them split, HF-named."""
    out = {hf_prefix + name: _pop(mc, prefix + key) for key, name in _layer_names(arch).items()}
    for kind in _qkv_kinds(arch):
        q, k, v = _split_qkv(_pop(mc, f"{prefix}self_attention.linear_qkv.{kind}"), arch)
        out.update({f"{hf_prefix}self_attn.{p}_proj.{kind}": t for p, t in zip("qkv", (q, k, v))})
    gate, up = _pop(mc, prefix + "mlp.linear_fc1.weight").chunk(2)
    out.update({hf_prefix + "mlp.gate_proj.weight": gate, hf_prefix + "mlp.up_proj.weight": up})
    return out


def _fuse_qkv(q: Tensor, k: Tensor, v: Tensor, arch: HFArch) -> Tensor:
    """HF q [heads*hn, ...], k/v [groups*hn, ...] -> megatron's per-group [q heads of g; k_g; v_g] rows."""
    groups, hn, rest = arch.num_query_groups, arch.head_dim, q.shape[1:]
    per_group = [t.reshape(groups, -1, hn, *rest) for t in (q, k, v)]  # [groups, heads in group or 1, hn, ...]
    return torch.cat(per_group, dim=1).reshape(-1, *rest)


def _split_qkv(qkv: Tensor, arch: HFArch) -> tuple[Tensor, Tensor, Tensor]:
    """The inverse of `_fuse_qkv`."""
    groups, hn, rest = arch.num_query_groups, arch.head_dim, qkv.shape[1:]
    heads_per_group = arch.num_heads // groups
    q, k, v = qkv.reshape(groups, heads_per_group + 2, hn, *rest).split([heads_per_group, 1, 1], dim=1)
    return q.reshape(-1, *rest), k.reshape(-1, *rest), v.reshape(-1, *rest)


def _layer_names(arch: HFArch) -> dict[str, str]:
    return _LAYER_NAMES | _QK_NORM_NAMES if arch.qk_norm else _LAYER_NAMES


def _qkv_kinds(arch: HFArch) -> tuple[str, ...]:
    return ("weight", "bias") if arch.qkv_bias else ("weight",)


def _post_names(arch: HFArch) -> dict[str, str]:
    names = {"decoder.final_layernorm.weight": "model.norm.weight"}
    if not arch.tied_embeddings:
        names["output_layer.weight"] = "lm_head.weight"
    return names


def _without_extra_state(state: dict[str, Tensor]) -> dict[str, Tensor]:
    return {key: tensor for key, tensor in state.items() if not key.endswith(_EXTRA_STATE_SUFFIX)}


def _pop(state: dict[str, Tensor], key: str) -> Tensor:
    if key not in state:
        raise ValueError(f"missing tensor {key!r} in the state dict being converted")
    return state.pop(key)


def _require_consumed(state: dict[str, Tensor], side: str) -> None:
    if state:
        raise ValueError(f"unexpected {side} tensors for this config: {sorted(state)[:8]}")
