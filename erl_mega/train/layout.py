"""A run's parallel layout (TP × PP × DP, virtual stages), checked against the world size and the model at start."""

from __future__ import annotations

from dataclasses import dataclass

from transformers import PreTrainedConfig


@dataclass(frozen=True)
class ParallelLayout:
    """Tensor-, pipeline- and data-parallel sizes (tp * pp * dp is the world size); vpp chunks per pipeline rank."""

    tp: int
    pp: int
    dp: int
    vpp: int = 1

    @property
    def world_size(self) -> int:
        return self.tp * self.pp * self.dp


def parallel_layout(
    world_size: int, tp: int, pp: int, hf_config: PreTrainedConfig, vpp: int = 1
) -> ParallelLayout:
    """The layout for `trainer.tp` / `.pp` / `.vpp` on `world_size` ranks; every impossibility in one ValueError."""
    if tp < 1 or pp < 1 or vpp < 1:
        raise ValueError(f"trainer.tp={tp}, trainer.pp={pp}, trainer.vpp={vpp}; all must be >= 1")
    problems = []
    if vpp > 1 and pp == 1:
        problems.append(f"trainer.vpp={vpp} needs trainer.pp > 1 (virtual stages interleave pipeline ranks)")
    if world_size % (tp * pp):
        problems.append(f"trainer.tp * trainer.pp = {tp * pp} does not divide the world size {world_size}")
    divisible_by_tp = {
        "num_attention_heads": hf_config.num_attention_heads,
        "num_key_value_heads": hf_config.num_key_value_heads,
        "vocab_size": hf_config.vocab_size,  # the vocab is not padded: shards must be equal
        "intermediate_size": hf_config.intermediate_size,
    }
    problems += [f"model {name}={value} is not divisible by trainer.tp={tp}" for name, value in divisible_by_tp.items() if value % tp]
    if hf_config.num_hidden_layers % (pp * vpp):
        problems.append(
            f"model num_hidden_layers={hf_config.num_hidden_layers} is not divisible by "
            f"trainer.pp={pp} * trainer.vpp={vpp}"
        )
    if problems:
        raise ValueError("impossible parallel layout: " + "; ".join(problems))
    return ParallelLayout(tp, pp, world_size // (tp * pp), vpp)
