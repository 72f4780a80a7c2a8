"""What a megatron-core GPTModel forward keeps for backward, from autograd's own saved tensors (test helper).

Distinct storages, parameters excluded, caught with `saved_tensors_hooks` and attributed to the decoder
layer running when they were saved; one layer's share is the difference of a 3-layer and a 1-layer model.
"""

from __future__ import annotations

import torch
from transformers import AutoConfig

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

    def layer_bytes(self) -> list[int]:
        return [sum(self.by_layer[i].values()) for i in sorted(k for k in self.by_layer if k is not None)]


def hf_config(model_type: str, layers: int = 1):
    return AutoConfig.for_model(model_type, num_hidden_layers=layers, **SHAPE)


def run(model_type: str, layers: int, recompute: str, backward: bool = False) -> tuple[int, SavedBytes]:
    """Forward (and optionally backward) one fp32 micro-batch under megatron's parallel state; (bytes the
    forward saved, the tracker: after a backward it holds what backward's recomputation saved)."""
    model = build_gpt_model(hf_config(model_type, layers), torch.float32).train()
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


def per_layer_bytes(model_type: str, recompute: str) -> int:
    """One decoder layer's saved bytes per micro-batch of MBS x SEQ tokens."""
    return (run(model_type, 3, recompute)[0] - run(model_type, 1, recompute)[0]) // 2
