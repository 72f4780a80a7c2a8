"""The embedded default policy's architecture: a few-million-parameter Qwen2 model (HF format)."""

from __future__ import annotations

import torch
from transformers import PreTrainedTokenizerBase, Qwen2Config, Qwen2ForCausalLM

from erl_mega.config.schema import TinyModelConfig


def tiny_config(cfg: TinyModelConfig, tokenizer: PreTrainedTokenizerBase) -> Qwen2Config:
    """A Qwen2 config of the configured size, with the tokenizer's vocabulary and special ids."""
    return Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads,
        max_position_embeddings=cfg.max_position,
        rope_theta=10000.0,
        rms_norm_eps=1e-6,
        tie_word_embeddings=True,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
    )


def init_tiny_state(config: Qwen2Config, seed: int) -> dict[str, torch.Tensor]:
    """Randomly initialised HF weights (transformers' own init), reproducible by seed."""
    torch.manual_seed(seed)
    state = {k: v.detach().clone() for k, v in Qwen2ForCausalLM(config).state_dict().items()}
    if config.tie_word_embeddings:
        del state["lm_head.weight"]  # tied: HF checkpoints store the embedding once
    return state
