"""Typed schemas for the hydra configs: what the code below the CLI receives, validated at start."""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass
from typing import Any

from erl_mega.algo.erl import ErlConfig
from erl_mega.train.trainer import TrainerConfig


@dataclass(frozen=True)
class TinyModelConfig:
    """The embedded default's architecture (`model.tiny.*`)."""

    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    intermediate_size: int
    vocab_size: int
    max_position: int

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_heads:
            raise ValueError(f"model.tiny.hidden_size={self.hidden_size} not divisible by num_heads={self.num_heads}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"model.tiny.num_heads={self.num_heads} not divisible by num_kv_heads={self.num_kv_heads}")


@dataclass(frozen=True)
class WarmupConfig:
    """The base policy's SFT warm-up on demonstrations (`model.warmup.*`)."""

    episodes: int
    epochs: int
    lr: float
    batch_size: int
    noise: float
    reflected_noise: float
    missing_tag_rate: float

    def __post_init__(self) -> None:
        for name in ("noise", "reflected_noise", "missing_tag_rate"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"model.warmup.{name}={getattr(self, name)}; must be in [0, 1]")


@dataclass(frozen=True)
class ModelConfig:
    """Which policy to train: an HF checkpoint `path`, a named pretrained `source`, or the embedded tiny one."""

    path: str | None
    source: str | None  # e.g. smollm2-135m: converted once into an HF directory under cache_dir (model/gguf.py)
    cache_dir: str
    dtype: str
    tiny: TinyModelConfig | None = None  # the embedded default only
    warmup: WarmupConfig | None = None

    def __post_init__(self) -> None:
        if self.dtype not in ("float32", "bfloat16"):
            raise ValueError(f"model.dtype={self.dtype!r}; choose 'float32' or 'bfloat16'")
        if self.path is not None and self.source is not None:
            raise ValueError(f"model.path={self.path!r} and model.source={self.source!r} are both set; choose one")
        if self.source is not None:
            from erl_mega.model.gguf import check_source

            check_source(self.source, self.cache_dir)  # unknown, or neither converted nor installed: fail now
        elif self.path is None and (self.tiny is None or self.warmup is None):
            raise ValueError("model.tiny and model.warmup are needed when neither model.path nor model.source is set")


@dataclass(frozen=True)
class EnvConfig:
    """The environment, its turn limit, the initial system prompt and its own options (`env.*`)."""

    name: str
    max_turns: int
    initial_prompt: str
    options: dict

    def __post_init__(self) -> None:
        from erl_mega.envs.base import make_env

        make_env(self.name, max_turns=self.max_turns, **self.options)  # a bad name or option fails here, at start


@dataclass(frozen=True)
class RolloutConfig:
    """The rollout backend and sampling (`rollout.*`)."""

    backend: str
    temperature: float
    top_p: float
    max_new_tokens: int
    reflect_max_new_tokens: int
    max_batch_size: int
    reflect_temperature: float = 0.5  # the reflection role's sampling (the reference: 0.5 / 0.9)
    reflect_top_p: float = 0.9

    def __post_init__(self) -> None:
        if self.backend != "local":
            raise ValueError(f"rollout.backend={self.backend!r}; choose 'local'")
        for name in ("temperature", "reflect_temperature"):
            if getattr(self, name) <= 0:
                raise ValueError(f"rollout.{name}={getattr(self, name)}; training rollouts need > 0")


@dataclass(frozen=True)
class RunConfig:
    """One run: the top-level keys plus one section per concern."""

    steps: int
    tasks_per_step: int
    seed: int
    out_dir: str
    checkpoint_every: int
    resume: bool
    eval_tasks: int
    plot: bool
    model: ModelConfig
    env: EnvConfig
    algo: ErlConfig
    trainer: TrainerConfig
    rollout: RolloutConfig
    eval_every: int = 0  # steps between held-out evaluations logged as heldout_success; 0: start and end only
    eval_seed_start: int = 0  # first held-out task index (the study's fresh seeds)
    env_step_budget: int = 0  # stop once this many environment steps were sampled; 0: run all `steps`
    overwrite: bool = False  # a fresh run may replace another run's files in out_dir (else it refuses)

    def __post_init__(self) -> None:
        for name in ("steps", "tasks_per_step"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)}; must be >= 1")
        for name in ("checkpoint_every", "eval_tasks", "eval_every", "eval_seed_start", "env_step_budget"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)}; must be >= 0")


def build(cls: type, data: Any, prefix: str = "") -> Any:
    """Build dataclass `cls` from plain data; an unknown key or a wrong type is one ValueError naming it."""
    if not isinstance(data, dict):
        raise ValueError(f"{prefix.rstrip('.') or 'config'} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"unknown config key {prefix}{unknown[0]}; known keys here: {sorted(names)}")
    missing = sorted(f.name for f in dataclasses.fields(cls) if f.name not in data and _required(f))
    if missing:
        raise ValueError(f"missing config key {prefix}{missing[0]}")
    kwargs = {key: _coerce(hints[key], value, f"{prefix}{key}") for key, value in data.items()}
    return cls(**kwargs)


def _required(f: dataclasses.Field) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


def _coerce(hint: Any, value: Any, where: str) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        hint = next(a for a in args if a is not type(None))
        origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        return build(hint, value, f"{where}.")
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    expected = origin or hint
    if expected is bool and not isinstance(value, bool) or not isinstance(value, expected) or (
        expected is int and isinstance(value, bool)
    ):
        raise ValueError(f"{where}={value!r}: expected {getattr(expected, '__name__', expected)}")
    return value
