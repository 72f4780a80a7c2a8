"""The parallel layout (TP × PP × DP) of a run, checked against the world size and the model at start."""

from __future__ import annotations

from dataclasses import dataclass

from transformers import PreTrainedConfig


@dataclass(frozen=True)
class ParallelLayout:
    """Tensor-, pipeline- and data-parallel sizes; tp * pp * dp is the world size."""

    tp: int
    pp: int
    dp: int

    @property
    def world_size(self) -> int:
        return self.tp * self.pp * self.dp


def parallel_layout(world_size: int, tp: int, pp: int, hf_config: PreTrainedConfig) -> ParallelLayout:
    """The layout for `trainer.tp` / `trainer.pp` on `world_size` ranks; every impossibility in one ValueError."""
    if tp < 1 or pp < 1:
        raise ValueError(f"trainer.tp={tp}, trainer.pp={pp}; both must be >= 1")
    problems = []
    if world_size % (tp * pp):
        problems.append(f"trainer.tp * trainer.pp = {tp * pp} does not divide the world size {world_size}")
    divisible_by_tp = {
        "num_attention_heads": hf_config.num_attention_heads,
        "num_key_value_heads": hf_config.num_key_value_heads,
        "vocab_size": hf_config.vocab_size,  # the vocab is not padded: shards must be equal
        "intermediate_size": hf_config.intermediate_size,
    }
    problems += [f"model {name}={value} is not divisible by trainer.tp={tp}" for name, value in divisible_by_tp.items() if value % tp]
    if hf_config.num_hidden_layers % pp:
        problems.append(f"model num_hidden_layers={hf_config.num_hidden_layers} is not divisible by trainer.pp={pp}")
    if problems:
        raise ValueError("impossible parallel layout: " + "; ".join(problems))
    return ParallelLayout(tp, pp, world_size // (tp * pp))
