"""The megatron-core policy computes what transformers computes, on the host, for every supported family."""

from __future__ import annotations

import pytest
import torch
from megatron.core.transformer.enums import AttnMaskType
from transformers import AutoConfig

from erl_mega.train.convert import hf_to_megatron
from erl_mega.train.cpu_compat import SDPACoreAttention
from erl_mega.train.dist import init_parallel
from erl_mega.train.megatron_model import build_gpt_model, gpt_logits, transformer_config_from_hf

pytestmark = pytest.mark.usefixtures("megatron_parallel")

# Qwen3's head_dim differs from hidden / heads on purpose: kv_channels must come from the config.
FAMILIES = [("llama", {}), ("qwen2", {}), ("qwen3", {"head_dim": 32})]
LLAMA3_ROPE = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
    "rope_theta": 500000.0,
}
LENGTHS = (7, 4, 1)  # right-padded batch with odd lengths


def _megatron_twin(hf_model: torch.nn.Module) -> torch.nn.Module:
    model = build_gpt_model(hf_model.config)
    model.load_state_dict(hf_to_megatron(hf_model.state_dict(), hf_model.config), strict=True)
    return model


def _padded_batch(vocab: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(1, vocab, (len(LENGTHS), max(LENGTHS)), generator=generator)
    mask = torch.arange(max(LENGTHS))[None, :] < torch.tensor(LENGTHS)[:, None]
    return ids.masked_fill(~mask, 0), mask


def _assert_logits_match(hf_model: torch.nn.Module) -> None:
    model = _megatron_twin(hf_model).eval()
    ids, mask = _padded_batch(hf_model.config.vocab_size)
    with torch.no_grad():
        ours = gpt_logits(model, ids)
        theirs = hf_model(ids, attention_mask=mask.long()).logits
    assert ours.shape == (len(LENGTHS), max(LENGTHS), hf_model.config.vocab_size)
    torch.testing.assert_close(ours[mask], theirs[mask], atol=1e-5, rtol=0)


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
@pytest.mark.parametrize("model_type,overrides", FAMILIES, ids=[f for f, _ in FAMILIES])
def test_logits_match_transformers(tiny_hf_model, model_type, overrides, tied):
    _assert_logits_match(tiny_hf_model(model_type, tied=tied, **overrides))


@pytest.mark.parametrize(
    "rope", [{"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0}, LLAMA3_ROPE], ids=["linear", "llama3"]
)
def test_rope_scaling_matches_transformers(tiny_hf_model, rope):
    _assert_logits_match(tiny_hf_model("llama", rope_parameters=rope))


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
@pytest.mark.parametrize("model_type,overrides", FAMILIES, ids=[f for f, _ in FAMILIES])
def test_backward_gives_finite_grads(tiny_hf_model, model_type, overrides, tied):
    model = _megatron_twin(tiny_hf_model(model_type, tied=tied, **overrides)).train()
    ids, mask = _padded_batch(model.vocab_size)
    logits = gpt_logits(model, ids)
    loss = torch.nn.functional.cross_entropy(logits[:, :-1][mask[:, 1:]], ids[:, 1:][mask[:, 1:]])
    loss.backward()
    for name, param in model.named_parameters():
        assert param.grad is not None, name
        assert torch.isfinite(param.grad).all(), name
        assert param.grad.abs().sum() > 0, name


def test_bf16_model_runs(tiny_hf_model):
    model = build_gpt_model(tiny_hf_model("qwen3", head_dim=32).config, params_dtype=torch.bfloat16)
    ids, _ = _padded_batch(model.vocab_size)
    logits = gpt_logits(model, ids)
    assert logits.dtype == torch.bfloat16
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize(
    "model_type,overrides,field",
    [
        ("gpt2", {}, "model_type"),
        ("mistral", {}, "model_type"),
        ("llama", {"hidden_act": "gelu"}, "hidden_act"),
        ("llama", {"attention_bias": True}, "attention_bias"),
        ("llama", {"mlp_bias": True}, "mlp_bias"),
        ("qwen3", {"attention_bias": True}, "attention_bias"),
        ("qwen2", {"use_sliding_window": True, "max_window_layers": 0}, "layer_types"),
        ("llama", {"rope_parameters": {"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e4}}, "rope_type"),
        ("llama", {"rope_parameters": LLAMA3_ROPE | {"low_freq_factor": 2.0}}, "low_freq_factor"),
    ],
)
def test_unsupported_configs_raise(model_type, overrides, field):
    config = AutoConfig.for_model(model_type, **overrides)
    with pytest.raises(ValueError, match=field):
        transformer_config_from_hf(config)


def test_gpt_logits_wants_batch_by_tokens(tiny_hf_model):
    model = build_gpt_model(tiny_hf_model("llama").config)
    with pytest.raises(ValueError, match="input_ids"):
        gpt_logits(model, torch.zeros(5, dtype=torch.long))


def test_sdpa_core_attention_matches_reference_with_either_mask_form(tiny_hf_model):
    config = transformer_config_from_hf(tiny_hf_model("llama").config)
    attention = SDPACoreAttention(
        config=config, layer_number=1, attn_mask_type=AttnMaskType.causal, attention_type="self"
    )
    seq, batch, heads, groups, hn = 5, 2, 4, 2, 16
    q = torch.randn(seq, batch, heads, hn)
    k, v = torch.randn(2, seq, batch, groups, hn)
    masked_out = torch.ones(seq, seq, dtype=torch.bool).triu(1)  # megatron: True = masked out
    scores = torch.einsum("sbhd,tbhd->bhst", q, k.repeat_interleave(heads // groups, dim=2)) / hn**0.5
    probs = scores.masked_fill(masked_out, float("-inf")).softmax(-1)
    expected = torch.einsum("bhst,tbhd->sbhd", probs, v.repeat_interleave(heads // groups, dim=2))
    expected = expected.reshape(seq, batch, heads * hn)
    torch.testing.assert_close(attention(q, k, v, None), expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(attention(q, k, v, masked_out[None, None]), expected, atol=1e-5, rtol=0)


def test_init_parallel_is_idempotent_and_refuses_a_new_layout():
    init_parallel(tp=1, pp=1, seed=0)
    with pytest.raises(ValueError, match="tp"):
        init_parallel(tp=2, pp=1)
    with pytest.raises(ValueError, match="tp="):
        init_parallel(tp=0)
