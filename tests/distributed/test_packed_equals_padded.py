"""Packed (THD, document-masked attention) and padded micro-batches give the same loss and gradients."""

from __future__ import annotations

import pytest
import torch
from harness import LOSS, make_batch, save_tiny_hf, trainer_config

from erl_mega.train.megatron_trainer import MegatronTrainer


@pytest.fixture(scope="module")
def hf_path(tmp_path_factory):
    return save_tiny_hf(tmp_path_factory.mktemp("hf") / "qwen3", "qwen3", head_dim=32)


def test_packed_equals_padded(hf_path, megatron_parallel):
    batch = make_batch(rows=7, width=14, seed=3)
    padded = MegatronTrainer(hf_path, trainer_config(), LOSS)
    packed = MegatronTrainer(hf_path, trainer_config(packing=True, max_tokens_per_micro_batch=24), LOSS)
    assert len(packed._micro_batches(batch)) > 1  # several sequences share each packed row
    m_padded, m_packed = padded.step(batch), packed.step(batch)
    for key in ("policy_loss", "distill_loss", "grad_norm", "logprob_gap_mean"):
        assert m_packed[key] == pytest.approx(m_padded[key], rel=1e-5, abs=1e-7), key
    for (name, a), (_, b) in zip(padded.model.named_parameters(), packed.model.named_parameters()):  # grads of the step
        torch.testing.assert_close(b.main_grad, a.main_grad, rtol=1e-4, atol=1e-6, msg=lambda m, name=name: f"grad {name}: {m}")
