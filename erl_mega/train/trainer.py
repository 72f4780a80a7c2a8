"""The Trainer contract every backend fulfils, and the trainer's config (`trainer.*`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Protocol

from erl_mega.weights.buckets import NamedTensors
from erl_mega.train.batch import TrainBatch


@dataclass(frozen=True)
class TrainerConfig:
    """The trainer backend, optimizer, micro-batching and parallel layout (`trainer.*` in the hydra config)."""

    backend: str = "megatron"
    lr: float = 2e-4
    weight_decay: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.999
    grad_clip: float = 1.0
    micro_batch_size: int = 16
    bucket_mb: int = 64  # weight-sync bucket bound
    tp: int = 1  # tensor-parallel size; data-parallel size = world / (tp * pp)
    pp: int = 1  # pipeline-parallel size (1F1B)
    vpp: int = 1  # virtual stages (model chunks) per pipeline rank: interleaved 1F1B when > 1
    packing: bool = False  # pack sequences (THD) instead of padding rows
    max_tokens_per_micro_batch: int = 4096  # packed micro-batch bound (packing only)
    ppo_mini_batch_size: int | None = None  # rows per optimizer step (verl's); None: the whole batch, one step
    ppo_epochs: int = 1  # passes over the batch per training step, rows reshuffled each epoch
    old_logprobs: str = "recompute"  # the PPO ratio's old policy: "recompute" (trainer, before updates) or "rollout"

    def __post_init__(self) -> None:
        if self.backend != "megatron":
            raise ValueError(f"trainer.backend={self.backend!r}; choose 'megatron'")
        if self.lr <= 0:
            raise ValueError(f"trainer.lr={self.lr}; must be > 0")
        if self.micro_batch_size < 1:
            raise ValueError(f"trainer.micro_batch_size={self.micro_batch_size}; must be >= 1")
        if self.grad_clip <= 0:
            raise ValueError(f"trainer.grad_clip={self.grad_clip}; must be > 0")
        for name in ("tp", "pp", "vpp", "max_tokens_per_micro_batch"):
            if getattr(self, name) < 1:
                raise ValueError(f"trainer.{name}={getattr(self, name)}; must be >= 1")
        if self.ppo_mini_batch_size is not None and self.ppo_mini_batch_size < 1:
            raise ValueError(f"trainer.ppo_mini_batch_size={self.ppo_mini_batch_size}; must be >= 1 or null")
        if self.ppo_epochs < 1:
            raise ValueError(f"trainer.ppo_epochs={self.ppo_epochs}; must be >= 1")
        if self.old_logprobs not in ("recompute", "rollout"):
            raise ValueError(f"trainer.old_logprobs={self.old_logprobs!r}; choose 'recompute' or 'rollout'")
        if self.bucket_mb < 1:
            raise ValueError(f"trainer.bucket_mb={self.bucket_mb}; must be >= 1")


class Trainer(Protocol):
    """PPO updates on each TrainBatch (one optimizer step per mini-batch); weights leave as HF-named full tensors in buckets."""

    version: int

    def step(self, batch: TrainBatch) -> dict[str, float]: ...

    def named_parameters_hf(self) -> Iterator[NamedTensors]: ...

    def save(self, path: Path) -> None: ...

    def load(self, path: Path) -> None: ...
