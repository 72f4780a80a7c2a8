"""The rollout-engine contract: token ids in, token ids and per-token log-probs out."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Protocol, runtime_checkable

from erl_mega.weights.buckets import NamedTensors


@dataclass(frozen=True)
class SamplingParams:
    """Sampling knobs shared by every backend; `temperature=0` is greedy."""

    max_new_tokens: int = 32
    temperature: float = 1.0
    top_p: float = 1.0
    stop_token_ids: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens={self.max_new_tokens}; must be >= 1")
        if self.temperature < 0:
            raise ValueError(f"temperature={self.temperature}; must be >= 0")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p={self.top_p}; must be in (0, 1]")


@dataclass(frozen=True)
class GenerationRequest:
    """One prompt, already tokenised: the engine never sees text."""

    prompt_ids: tuple[int, ...]
    params: SamplingParams
    seed: int | None = None  # per-request sampling seed, for reproducible rollouts
    session: str | None = None  # an episode's id: a router keeps its turns on one server, where its prefix is cached


@dataclass(frozen=True)
class Completion:
    """The sampled continuation and the log-prob of each sampled token under the sampling policy."""

    token_ids: tuple[int, ...]
    logprobs: tuple[float, ...]  # len == len(token_ids); log p(token | prefix) at the sampling temperature
    finish_reason: str  # "stop" (a stop token was sampled and is included) or "length"
    weight_version: int


class RolloutEngine(Protocol):
    """What the agent loop and weight sync need from any backend (embedded torch, SGLang servers)."""

    weight_version: int

    def generate(self, requests: list[GenerationRequest]) -> list[Completion]: ...

    def update_weights(self, buckets: Iterable[NamedTensors], version: int) -> None: ...

    def release_memory(self) -> None: ...

    def resume_memory(self) -> None: ...

    def health(self) -> bool: ...


@runtime_checkable
class ConcurrentEngine(Protocol):
    """An engine that takes requests one at a time from many threads and serves them as they arrive
    (servers behind a client or the router): the agent loop then lets each episode advance on its own."""

    def generate_one(self, request: GenerationRequest) -> Completion: ...
