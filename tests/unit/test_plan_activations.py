"""The planner's activation bytes per layer against what a megatron-core GPTModel forward really keeps for backward.

Truth is autograd's own saved tensors (distinct storages, parameters excluded), caught with
`saved_tensors_hooks`; one layer's share is the difference between a 3-layer and a 1-layer model.
"""

import pytest
import torch
from megatron.core.tensor_parallel import random as megatron_random
from transformers import AutoConfig

from erl_mega.plan.memory import layer_activation_bytes
from erl_mega.plan.shape import load_shape
from erl_mega.train.megatron_model import build_gpt_model, gpt_hidden_states

SEQ, MBS = 40, 2
SHAPE = dict(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=16, intermediate_size=96,
             vocab_size=128, max_position_embeddings=128)


class SavedBytes:
    """Bytes of the distinct storages autograd saves, per decoder layer running when they were saved."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.params = {p.untyped_storage().data_ptr() for p in model.parameters()}
        self.layer, self.by_layer = None, {}
        for i, layer in enumerate(model.decoder.layers):
            layer.register_forward_pre_hook(lambda module, args, i=i: setattr(self, "layer", i))

    def pack(self, t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in self.params:
            self.by_layer.setdefault(self.layer, {})[storage.data_ptr()] = storage.nbytes()
        return t

    def total(self) -> int:
        """Distinct storages over all layers (full recompute saves the one RoPE table in every layer)."""
        return sum({ptr: n for s in self.by_layer.values() for ptr, n in s.items()}.values())


def _run(model_type: str, layers: int, recompute: str, backward: bool = False) -> tuple[int, SavedBytes]:
    """Forward (and optionally backward) one fp32 micro-batch; (bytes saved by the forward, the tracker)."""
    config = AutoConfig.for_model(model_type, num_hidden_layers=layers, **SHAPE)
    model = build_gpt_model(config, torch.float32).train()
    if recompute == "full":  # megatron's full recompute: every layer checkpointed, read at forward time
        model.config.recompute_granularity, model.config.recompute_method = "full", "uniform"
        model.config.recompute_num_layers = 1
    saved = SavedBytes(model)
    ids = torch.randint(0, SHAPE["vocab_size"], (MBS, SEQ))
    with torch.autograd.graph.saved_tensors_hooks(saved.pack, lambda t: t):
        hidden = gpt_hidden_states(model, ids, torch.arange(SEQ).expand(MBS, SEQ))
    forward = saved.total()
    if backward:
        loss = hidden.square().sum()
        saved.by_layer.clear()
        with torch.autograd.graph.saved_tensors_hooks(saved.pack, lambda t: t):
            loss.backward()
    return forward, saved


@pytest.fixture
def host_checkpoint_rng(monkeypatch):
    """megatron's CheckpointFunction records the CUDA RNG state; on the host the host state stands in."""
    if not torch.cuda.is_available():
        monkeypatch.setattr(torch.cuda.random, "get_rng_state", lambda device="cuda": torch.get_rng_state())
        monkeypatch.setattr(megatron_random, "_set_cuda_rng_state", lambda state, device=-1, graph_safe=False: None)


@pytest.mark.parametrize("model_type", ["llama", "qwen2", "qwen3"])
def test_no_recompute_layer_bytes_equal_saved_tensors(megatron_parallel, tmp_path, model_type):
    one, _ = _run(model_type, 1, "none")
    three, _ = _run(model_type, 3, "none")
    (tmp_path / "config.json").write_text(AutoConfig.for_model(model_type, num_hidden_layers=1, **SHAPE).to_json_string())
    assert (three - one) // 2 == layer_activation_bytes(load_shape(str(tmp_path)), SEQ, MBS, 1, "none", dtype_bytes=4)


@pytest.mark.parametrize("model_type", ["llama", "qwen3"])
def test_full_recompute_keeps_layer_inputs_and_recomputes_one_layer_at_a_time(
        megatron_parallel, host_checkpoint_rng, tmp_path, model_type):
    (tmp_path / "config.json").write_text(AutoConfig.for_model(model_type, num_hidden_layers=1, **SHAPE).to_json_string())
    shape = load_shape(str(tmp_path))
    one, _ = _run(model_type, 1, "full")
    three, saved = _run(model_type, 3, "full", backward=True)
    assert (three - one) // 2 == layer_activation_bytes(shape, SEQ, MBS, 1, "full", dtype_bytes=4)
    # backward's recompute saves each layer's whole working set, the same bytes as without recompute
    per_layer = [sum(saved.by_layer[i].values()) for i in range(3)]
    assert per_layer == [layer_activation_bytes(shape, SEQ, MBS, 1, "none", dtype_bytes=4)] * 3
