"""Spawned ranks for the planner's memory test: what megatron-core allocates, measured from the tensors."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from harness import LOSS, trainer_config
from megatron.core import parallel_state

from erl_mega.train.dist import reset_parallel
from erl_mega.train.megatron_trainer import MegatronTrainer


def _bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def measure(rank: int, hf_path: Path, out: Path, layouts: list[tuple[int, int]]) -> None:
    """Per (tp, pp): this rank's parameter, gradient-buffer and Adam-state bytes, to `<out>/<tp>_<pp>_<rank>.json`."""
    for tp, pp in layouts:
        trainer = MegatronTrainer(hf_path, trainer_config(tp, pp), LOSS)
        state = [v for s in trainer.optimizer.optimizer.state.values() for k, v in s.items() if k in ("exp_avg", "exp_avg_sq")]
        result = {
            "stage": parallel_state.get_pipeline_model_parallel_rank(),
            "params": _bytes(p for p in trainer.model.parameters()),
            "grads": _bytes(b.grad_data for ddp in trainer.ddp for b in ddp.buffers),
            "optimizer": _bytes(state),
        }
        (out / f"{tp}_{pp}_{rank}.json").write_text(json.dumps(result))
        reset_parallel()


def layer_activations(rank: int, out: Path, model_types: list[str]) -> None:
    """At TP=2: one decoder layer's saved-for-backward bytes on this rank, to `<out>/<model_type>_<rank>.json`."""
    from saved_tensors import per_layer_bytes

    from erl_mega.train.dist import init_parallel

    init_parallel(tp=2)
    for model_type in model_types:
        (out / f"{model_type}_{rank}.json").write_text(json.dumps(per_layer_bytes(model_type, "none")))
