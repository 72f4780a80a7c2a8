"""The Trainer contract every backend (embedded Megatron today, parallel Megatron later) fulfils."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Protocol

from erl_mega.rollout.engine import NamedTensors
from erl_mega.train.batch import TrainBatch


@dataclass(frozen=True)
class TrainerConfig:
    """The trainer backend, optimizer and micro-batching (`trainer.*` in the hydra config)."""

    backend: str = "megatron"
    lr: float = 2e-4
    weight_decay: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.999
    grad_clip: float = 1.0
    micro_batch_size: int = 16
    bucket_mb: int = 64  # weight-sync bucket bound

    def __post_init__(self) -> None:
        if self.backend != "megatron":
            raise ValueError(f"trainer.backend={self.backend!r}; choose 'megatron'")
        if self.lr <= 0:
            raise ValueError(f"trainer.lr={self.lr}; must be > 0")
        if self.micro_batch_size < 1:
            raise ValueError(f"trainer.micro_batch_size={self.micro_batch_size}; must be >= 1")
        if self.grad_clip <= 0:
            raise ValueError(f"trainer.grad_clip={self.grad_clip}; must be > 0")
        if self.bucket_mb < 1:
            raise ValueError(f"trainer.bucket_mb={self.bucket_mb}; must be >= 1")


class Trainer(Protocol):
    """One optimizer step per TrainBatch; weights leave as HF-named full tensors in buckets."""

    version: int

    def step(self, batch: TrainBatch) -> dict[str, float]: ...

    def named_parameters_hf(self) -> Iterator[NamedTensors]: ...

    def save(self, path: Path) -> None: ...

    def load(self, path: Path) -> None: ...
