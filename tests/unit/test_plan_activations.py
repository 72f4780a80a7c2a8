"""The planner's activation bytes per layer against what a megatron-core GPTModel forward really keeps for backward."""

import pytest
import torch
from megatron.core.tensor_parallel import random as megatron_random
from saved_tensors import MBS, SEQ, hf_config, per_layer_bytes, run

from erl_mega.plan.memory import layer_activation_bytes
from erl_mega.plan.shape import load_shape


def _shape(tmp_path, model_type):
    (tmp_path / "config.json").write_text(hf_config(model_type).to_json_string())
    return load_shape(str(tmp_path))


@pytest.fixture
def host_checkpoint_rng(monkeypatch):
    """megatron's CheckpointFunction records the CUDA RNG state; on the host the host state stands in."""
    if not torch.cuda.is_available():
        monkeypatch.setattr(torch.cuda.random, "get_rng_state", lambda device="cuda": torch.get_rng_state())
        monkeypatch.setattr(megatron_random, "_set_cuda_rng_state", lambda state, device=-1, graph_safe=False: None)


@pytest.mark.parametrize("model_type", ["llama", "qwen2", "qwen3"])
def test_no_recompute_layer_bytes_equal_saved_tensors(megatron_parallel, tmp_path, model_type):
    want = layer_activation_bytes(_shape(tmp_path, model_type), SEQ, MBS, 1, "none", dtype_bytes=4)
    assert per_layer_bytes(model_type, "none") == want


@pytest.mark.parametrize("model_type", ["llama", "qwen3"])
def test_full_recompute_keeps_layer_inputs_and_recomputes_one_layer_at_a_time(
        megatron_parallel, host_checkpoint_rng, tmp_path, model_type):
    shape = _shape(tmp_path, model_type)
    assert per_layer_bytes(model_type, "full") == layer_activation_bytes(shape, SEQ, MBS, 1, "full", dtype_bytes=4)
    # backward's recompute saves each layer's whole working set, the same bytes as without recompute
    _, saved = run(model_type, 3, "full", backward=True)
    assert saved.layer_bytes() == [layer_activation_bytes(shape, SEQ, MBS, 1, "none", dtype_bytes=4)] * 3
