"""The policy as a megatron-core GPTModel, built from a transformers Llama / Qwen2 / Qwen3 config."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
from megatron.core import parallel_state
from megatron.core.models.gpt import GPTModel
from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
from megatron.core.packed_seq_params import PackedSeqParams
from megatron.core.transformer.spec_utils import ModuleSpec
from megatron.core.transformer.transformer_config import TransformerConfig
from torch import Tensor
from transformers import PreTrainedConfig

from erl_mega.train import cpu_compat

SUPPORTED_MODEL_TYPES = ("llama", "qwen2", "qwen3")

# megatron's RotaryEmbedding._apply_scaling hard-codes these llama3 knobs; only `factor` is free.
_MEGATRON_LLAMA3_ROPE = {"low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}


def _default_rope(params: dict[str, Any]) -> dict[str, Any]:
    return {}


def _linear_rope(params: dict[str, Any]) -> dict[str, Any]:
    return {"seq_len_interpolation_factor": params["factor"]}


def _llama3_rope(params: dict[str, Any]) -> dict[str, Any]:
    for knob, value in _MEGATRON_LLAMA3_ROPE.items():
        if params.get(knob) != value:
            raise ValueError(
                f"hf_config.rope_parameters[{knob!r}]={params.get(knob)!r} is not supported; "
                f"megatron's llama3 RoPE scaling fixes it to {value}"
            )
    return {"rope_scaling": True, "rope_scaling_factor": params["factor"]}


_ROPE_TYPES: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "default": _default_rope,
    "linear": _linear_rope,
    "llama3": _llama3_rope,
}


def _rope_kwargs(hf_config: PreTrainedConfig) -> dict[str, Any]:
    """GPTModel's RoPE arguments for the HF `rope_parameters`; unsupported rope types raise."""
    params = dict(hf_config.rope_parameters)
    rope_type = params.get("rope_type", "default")
    if rope_type not in _ROPE_TYPES:
        raise ValueError(
            f"hf_config.rope_parameters['rope_type']={rope_type!r} is not supported; "
            f"expected one of {tuple(_ROPE_TYPES)}"
        )
    return {"rotary_base": params["rope_theta"], **_ROPE_TYPES[rope_type](params)}


@dataclass(frozen=True)
class HFArch:
    """What the Megatron build and the weight converter need to know about an HF decoder."""

    model_type: str
    num_layers: int
    num_heads: int
    num_query_groups: int
    head_dim: int
    qkv_bias: bool  # Qwen2: biases on q/k/v only
    qk_norm: bool  # Qwen3: RMSNorm over head_dim on q and k
    tied_embeddings: bool
    rope: dict[str, Any]  # GPTModel's rotary_* / rope_* arguments


def hf_arch(hf_config: PreTrainedConfig) -> HFArch:
    """Validate an HF config against what the Megatron model reproduces exactly; ValueError names the field."""
    model_type = getattr(hf_config, "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(
            f"hf_config.model_type={model_type!r} is not supported; expected one of {SUPPORTED_MODEL_TYPES}"
        )
    if hf_config.hidden_act != "silu":
        raise ValueError(f"hf_config.hidden_act={hf_config.hidden_act!r} is not supported; expected 'silu'")
    for field in ("attention_bias", "mlp_bias"):  # Llama/Qwen3 extras megatron's add_bias_linear cannot mirror
        if getattr(hf_config, field, False):
            raise ValueError(f"hf_config.{field}=True is not supported; expected False")
    layer_types = set(getattr(hf_config, "layer_types", None) or ["full_attention"])
    if layer_types != {"full_attention"}:
        raise ValueError(
            f"hf_config.layer_types={sorted(layer_types)} is not supported; expected only 'full_attention'"
        )
    return HFArch(
        model_type=model_type,
        num_layers=hf_config.num_hidden_layers,
        num_heads=hf_config.num_attention_heads,
        num_query_groups=hf_config.num_key_value_heads,
        head_dim=getattr(hf_config, "head_dim", None) or hf_config.hidden_size // hf_config.num_attention_heads,
        qkv_bias=model_type == "qwen2",
        qk_norm=model_type == "qwen3",
        tied_embeddings=bool(hf_config.tie_word_embeddings),
        rope=_rope_kwargs(hf_config),
    )


def transformer_config_from_hf(
    hf_config: PreTrainedConfig, params_dtype: torch.dtype = torch.float32
) -> TransformerConfig:
    """The megatron TransformerConfig that computes what the HF decoder computes."""
    arch = hf_arch(hf_config)
    vpp = parallel_state.get_virtual_pipeline_model_parallel_world_size()
    return TransformerConfig(
        # The layout megatron's parallel state holds: layers per stage and head shards follow it.
        tensor_model_parallel_size=parallel_state.get_tensor_model_parallel_world_size(),
        pipeline_model_parallel_size=parallel_state.get_pipeline_model_parallel_world_size(),
        virtual_pipeline_model_parallel_size=vpp,
        # Interleaved: unbatched p2p, as megatron-LM runs it. Batched p2p posts [send prev, recv prev,
        # send next, recv next]: at pp=2 prev and next are one peer, so a call that sends both an
        # activation and a gradient pairs each with the other's receive (see pipeline_p2p.py).
        batch_p2p_comm=vpp is None,
        num_layers=arch.num_layers,
        hidden_size=hf_config.hidden_size,
        ffn_hidden_size=hf_config.intermediate_size,
        num_attention_heads=arch.num_heads,
        num_query_groups=arch.num_query_groups,
        kv_channels=arch.head_dim,
        normalization="RMSNorm",
        layernorm_epsilon=hf_config.rms_norm_eps,
        gated_linear_unit=True,  # SwiGLU: linear_fc1 holds [gate; up]
        activation_func=F.silu,
        add_bias_linear=False,
        add_qkv_bias=arch.qkv_bias,
        qk_layernorm=arch.qk_norm,
        hidden_dropout=0.0,
        attention_dropout=hf_config.attention_dropout,
        init_method_std=hf_config.initializer_range,
        params_dtype=params_dtype,
        pipeline_dtype=params_dtype,  # what pipeline stages send each other
        bf16=params_dtype == torch.bfloat16,
        fp16=params_dtype == torch.float16,
        use_cpu_initialization=cpu_compat.on_host(),
    )


def gpt_layer_spec(config: TransformerConfig) -> ModuleSpec:
    """megatron-core's local layer spec with SDPA core attention (host and GPU alike: it has the THD path)."""
    spec = get_gpt_layer_local_spec(normalization="RMSNorm", qk_layernorm=config.qk_layernorm)
    spec.submodules.self_attention.submodules.core_attention = cpu_compat.SDPACoreAttention
    return spec


def build_gpt_model(
    hf_config: PreTrainedConfig,
    params_dtype: torch.dtype = torch.float32,
    *,
    pre_process: bool = True,
    post_process: bool = True,
    vp_stage: int | None = None,
) -> GPTModel:
    """A randomly initialised GPTModel shaped like the HF model; vocab exactly as HF (no padding).

    Tensor- and pipeline-parallel sizes come from megatron's parallel state; `pre_process` /
    `post_process` say whether this pipeline stage holds the embedding / the final norm and head;
    `vp_stage` is the model chunk's virtual stage under an interleaved pipeline (None without one).
    """
    config = transformer_config_from_hf(hf_config, params_dtype)
    arch = hf_arch(hf_config)
    model = GPTModel(
        config,
        gpt_layer_spec(config),
        vocab_size=hf_config.vocab_size,
        max_sequence_length=hf_config.max_position_embeddings,
        pre_process=pre_process,
        post_process=post_process,
        position_embedding_type="rope",
        share_embeddings_and_output_weights=arch.tied_embeddings,
        vp_stage=vp_stage,
        **arch.rope,
    )
    if cpu_compat.on_host():
        cpu_compat.keep_rope_on_host(model)
    return model


def gpt_logits(model: GPTModel, input_ids: Tensor) -> Tensor:
    """Causal logits [B, T, V] for token ids [B, T] at positions 0..T-1 (right padding is harmless)."""
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids has shape {tuple(input_ids.shape)}; expected [batch, tokens]")
    batch, tokens = input_ids.shape
    position_ids = torch.arange(tokens, device=input_ids.device).expand(batch, tokens)
    # With labels=None GPTModel._postprocess transposes its [T, B, V] logits to [B, T, V];
    # runtime_gather_output gathers the vocab shards under tensor parallelism.
    return model(input_ids, position_ids, attention_mask=None, runtime_gather_output=True)


def gpt_hidden_states(
    model: GPTModel, input_ids: Tensor, position_ids: Tensor, packed_seq_params: PackedSeqParams | None = None
) -> Tensor:
    """The stage's output [s, b, h]; on the last stage the lm-head's input (final norm applied), not logits.

    GPTModel returns the decoder's output when `post_process` is off, so it is switched off for
    the call: the loss then runs hidden x output weight in chunks and never holds [s, b, V] logits.
    """
    post_process, model.post_process = model.post_process, False
    try:
        return model(input_ids, position_ids, attention_mask=None, packed_seq_params=packed_seq_params)
    finally:
        model.post_process = post_process


def output_weight(model: GPTModel) -> Tensor:
    """The last stage's lm-head weight [V / tp, h]: the output layer's, or the tied embedding's."""
    if model.share_embeddings_and_output_weights:
        return model.shared_embedding_or_output_weight()
    return model.output_layer.weight
