"""HF <-> Megatron weight conversion is exact, strict about names, and streams every tensor once."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoConfig

from erl_mega.train.convert import hf_to_megatron, iter_hf_buckets, megatron_to_hf
from erl_mega.train.megatron_model import build_gpt_model

pytestmark = pytest.mark.usefixtures("megatron_parallel")

FAMILIES = [("llama", {}), ("qwen2", {}), ("qwen3", {"head_dim": 32})]
BUCKET_BYTES = 20_000  # smaller than the 300 x 64 fp32 embedding (76.8 kB), larger than a layer's norms


def _saved_hf_state(hf_model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The state dict HF saves: a tied head is stored once, as the embedding."""
    state = hf_model.state_dict()
    if hf_model.config.tie_word_embeddings:
        state.pop("lm_head.weight")
    return state


def _loaded_megatron(hf_model: torch.nn.Module) -> torch.nn.Module:
    model = build_gpt_model(hf_model.config)
    model.load_state_dict(hf_to_megatron(hf_model.state_dict(), hf_model.config), strict=True)
    return model


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
@pytest.mark.parametrize("model_type,overrides", FAMILIES, ids=[f for f, _ in FAMILIES])
def test_round_trip_is_bit_exact(tiny_hf_model, model_type, overrides, tied):
    hf_model = tiny_hf_model(model_type, tied=tied, **overrides)
    expected = _saved_hf_state(hf_model)
    back = megatron_to_hf(_loaded_megatron(hf_model).state_dict(), hf_model.config)
    assert back.keys() == expected.keys()
    for name, tensor in expected.items():
        assert back[name].dtype == tensor.dtype, name
        assert torch.equal(back[name], tensor), name


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
@pytest.mark.parametrize("model_type,overrides", FAMILIES, ids=[f for f, _ in FAMILIES])
def test_buckets_stream_every_tensor_once_within_the_bound(tiny_hf_model, model_type, overrides, tied):
    hf_model = tiny_hf_model(model_type, tied=tied, **overrides)
    expected = _saved_hf_state(hf_model)
    buckets = list(iter_hf_buckets(_loaded_megatron(hf_model), hf_model.config, BUCKET_BYTES))
    names = [name for bucket in buckets for name, _ in bucket]
    assert sorted(names) == sorted(expected)
    for bucket in buckets:
        nbytes = sum(t.numel() * t.element_size() for _, t in bucket)
        assert nbytes <= BUCKET_BYTES or len(bucket) == 1
        for name, tensor in bucket:
            assert torch.equal(tensor, expected[name]), name
    assert any(len(bucket) == 1 and "embed_tokens" in bucket[0][0] for bucket in buckets)
    assert any(len(bucket) > 1 for bucket in buckets)


def test_buckets_follow_training_updates(tiny_hf_model):
    hf_model = tiny_hf_model("qwen2")
    model = _loaded_megatron(hf_model)
    with torch.no_grad():
        model.decoder.layers[1].self_attention.linear_qkv.bias.add_(1.0)
    streamed = dict(pair for bucket in iter_hf_buckets(model, hf_model.config, BUCKET_BYTES) for pair in bucket)
    exported = megatron_to_hf(model.state_dict(), hf_model.config)
    assert all(torch.equal(streamed[name], exported[name]) for name in exported)
    shifted = hf_model.state_dict()["model.layers.1.self_attn.k_proj.bias"] + 1.0
    assert torch.equal(streamed["model.layers.1.self_attn.k_proj.bias"], shifted)


def test_bucket_bound_must_be_positive(tiny_hf_model):
    hf_model = tiny_hf_model("llama")
    with pytest.raises(ValueError, match="bucket_bytes"):
        next(iter_hf_buckets(build_gpt_model(hf_model.config), hf_model.config, 0))


def test_missing_hf_tensor_is_named(tiny_hf_model):
    hf_model = tiny_hf_model("llama")
    state = hf_model.state_dict()
    del state["model.layers.1.mlp.up_proj.weight"]
    with pytest.raises(ValueError, match=r"model\.layers\.1\.mlp\.up_proj\.weight"):
        hf_to_megatron(state, hf_model.config)


def test_unexpected_tensors_are_named(tiny_hf_model):
    qwen2 = tiny_hf_model("qwen2")
    with pytest.raises(ValueError, match=r"unexpected HF tensors.*q_proj\.bias"):
        hf_to_megatron(qwen2.state_dict(), tiny_hf_model("llama").config)
    qwen2_megatron = _loaded_megatron(qwen2).state_dict()
    with pytest.raises(ValueError, match=r"unexpected megatron tensors.*linear_qkv\.bias"):
        megatron_to_hf(qwen2_megatron, tiny_hf_model("llama").config)


@pytest.mark.parametrize("model_type", ["gpt2", "mistral"])
def test_unsupported_architecture_raises(model_type):
    config = AutoConfig.for_model(model_type)
    with pytest.raises(ValueError, match="model_type"):
        hf_to_megatron({}, config)
    with pytest.raises(ValueError, match="model_type"):
        megatron_to_hf({}, config)
