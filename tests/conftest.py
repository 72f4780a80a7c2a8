"""Fixtures shared across test suites."""

from __future__ import annotations

from typing import Callable, Iterator

import pytest
import torch


@pytest.fixture(scope="session")
def megatron_parallel() -> Iterator[None]:
    """One single-process gloo group and megatron parallel state (tp=pp=1) for the whole pytest run."""
    from erl_mega.train.dist import destroy_parallel, init_parallel

    init_parallel(tp=1, pp=1, seed=0)
    yield
    destroy_parallel()


TINY_HF_SHAPE = dict(
    hidden_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    intermediate_size=128,
    vocab_size=300,
    max_position_embeddings=64,
)


@pytest.fixture
def tiny_hf_model() -> Callable[..., torch.nn.Module]:
    """Factory: a tiny fp32 transformers causal LM with every weight random (norms around 1, biases nonzero)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    def make(model_type: str, tied: bool = False, seed: int = 0, **overrides: object) -> torch.nn.Module:
        config = AutoConfig.for_model(model_type, **(TINY_HF_SHAPE | {"tie_word_embeddings": tied} | overrides))
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
        with torch.no_grad():
            for name, param in model.named_parameters():
                param.copy_((1.0 if "norm" in name else 0.0) + 0.2 * torch.randn_like(param))
        return model

    return make
