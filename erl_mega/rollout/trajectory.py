"""Token-level trajectories: what was sampled, what the environment said, and the log-probs."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Segment:
    """A run of token ids; `logprobs` is set exactly when the policy sampled them (trained tokens)."""

    token_ids: tuple[int, ...]
    logprobs: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if self.logprobs is not None and len(self.logprobs) != len(self.token_ids):
            raise ValueError(f"{len(self.logprobs)} log-probs for {len(self.token_ids)} tokens")

    @property
    def sampled(self) -> bool:
        return self.logprobs is not None


@dataclass(frozen=True)
class Turn:
    """One agent reply as text and the environment's answer to it (the reflection reads these)."""

    reply: str
    feedback: str
    reward: float
    observation: str = ""  # what the environment showed after this reply (the reflection reads it)


@dataclass(frozen=True)
class Trajectory:
    """One episode (or one single-turn call such as a reflection) as token segments.

    Segment 0 is always the system message, so context distillation swaps exactly that segment.
    """

    segments: tuple[Segment, ...]
    turns: tuple[Turn, ...]
    reward: float
    weight_version: int
    meta: dict = field(default_factory=dict, compare=False)
    temperature: float = 1.0  # the sampling temperature of its sampled tokens: the trainer scores them at it
    # False once re-paired with another system message: its log-probs were sampled under the old one, so they
    # are not the behaviour policy's for this sequence (no importance weight, no rollout-vs-trainer gap)
    behaviour_known: bool = True

    @property
    def feedback(self) -> str:
        """The environment's final verdict ('' when no turn was played)."""
        return self.turns[-1].feedback if self.turns else ""

    def token_ids(self) -> list[int]:
        return [t for s in self.segments for t in s.token_ids]

    def loss_mask(self) -> list[int]:
        return [int(s.sampled) for s in self.segments for _ in s.token_ids]

    def rollout_logprobs(self) -> list[float]:
        return [lp for s in self.segments for lp in (s.logprobs or (0.0,) * len(s.token_ids))]

    def with_system(self, system: Segment) -> "Trajectory":
        """The same episode re-paired with another system message (context distillation)."""
        if system.sampled:
            raise ValueError("a system segment is never sampled")
        return dataclasses.replace(self, segments=(system,) + self.segments[1:], meta=dict(self.meta),
                                   behaviour_known=False)
