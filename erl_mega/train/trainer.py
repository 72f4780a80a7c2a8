"""The Trainer contract every backend fulfils, and the trainer's config (`trainer.*`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Protocol

from erl_mega.weights.buckets import NamedTensors
from erl_mega.train.batch import TrainBatch


@dataclass(frozen=True)
class TrainerConfig:
    """The optimizer, micro-batching and parallel layout of the Megatron-core trainer (`trainer.*` in the hydra config)."""

    lr: float = field(default=5e-4, metadata={"allowed": "> 0"})
    weight_decay: float = field(default=0.0, metadata={"allowed": ">= 0"})
    beta1: float = field(default=0.9, metadata={"allowed": "[0, 1)"})
    beta2: float = field(default=0.999, metadata={"allowed": "[0, 1)"})
    grad_clip: float = field(default=1.0, metadata={"allowed": "> 0"})
    micro_batch_size: int = field(default=16, metadata={"allowed": ">= 1"})
    bucket_mb: int = field(default=64, metadata={"allowed": ">= 1"})  # weight-sync bucket bound
    # tensor-parallel size; data-parallel size = world / (tp * pp), checked against the world size at start
    tp: int = field(default=1, metadata={"allowed": ">= 1"})
    pp: int = field(default=1, metadata={"allowed": ">= 1"})  # pipeline-parallel size (1F1B)
    # virtual stages (model chunks) per pipeline rank: interleaved 1F1B when > 1; layers % (pp * vpp) == 0
    vpp: int = field(default=1, metadata={"allowed": ">= 1"})
    packing: bool = field(default=False, metadata={"allowed": "any"})  # pack sequences (THD) instead of padding rows
    # packed micro-batch bound (packing only)
    max_tokens_per_micro_batch: int = field(default=4096, metadata={"allowed": ">= 1"})
    # rows per optimizer step (verl's); None: the whole batch, one step
    ppo_mini_batch_size: int | None = field(default=None, metadata={"allowed": ">= 1"})
    ppo_epochs: int = field(default=1, metadata={"allowed": ">= 1"})  # passes over the batch per step, rows reshuffled each epoch
    # the PPO ratio's old policy: "recompute" (trainer, before updates) or "rollout"
    old_logprobs: str = field(default="recompute", metadata={"allowed": ("recompute", "rollout")})
    # steps rollout may run ahead of training (erl_mega/async_loop.py): rows of weight version >= v - k train
    # version v; 0: synchronous. Needs rollout servers placed apart (colocated runs synchronously)
    async_steps: int = field(default=0, metadata={"allowed": ">= 0"})


class Trainer(Protocol):
    """PPO updates on each TrainBatch (one optimizer step per mini-batch); weights leave as HF-named full tensors in buckets."""

    version: int

    def step(self, batch: TrainBatch) -> dict[str, float]: ...

    def named_parameters_hf(self) -> Iterator[NamedTensors]: ...

    def save(self, path: Path) -> None: ...

    def load(self, path: Path) -> None: ...
