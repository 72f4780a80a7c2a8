"""Typed schemas for the hydra configs: what the code below the CLI receives, validated at start.

Each field declares what it allows beside itself (`metadata={"allowed": ...}`, see erl_mega/config/rules.py);
`build` checks types and those rules with the field's full name before any dataclass is constructed.
Defaults live in one place: a dataclass default where the field has one (the library's value, also what
the CLI uses), else the YAML of the group option that sets it (configs/); YAML never restates a default.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from erl_mega.algo.erl import ErlConfig
from erl_mega.config.rules import problem, rule_of
from erl_mega.train.trainer import TrainerConfig

SEED = "[0, 2147483647]"  # numpy, torch and the rollout seed arithmetic all accept it


def _hf_checkpoint(path: str) -> str | None:
    """an HF checkpoint directory (config.json and weights)"""
    from erl_mega.model.hf_io import checkpoint_problem

    reason = checkpoint_problem(path)
    return None if reason is None else f"must be an HF checkpoint directory: {reason}"


def _env_name(name: str) -> str | None:
    """a registered environment"""
    from erl_mega.envs.base import env_names

    return None if name in env_names() else f"must be one of {env_names()}"


@dataclass(frozen=True)
class TinyModelConfig:
    """The embedded default's architecture (`model.tiny.*`)."""

    hidden_size: int = field(metadata={"allowed": ">= 1"})
    num_layers: int = field(metadata={"allowed": ">= 1"})
    num_heads: int = field(metadata={"allowed": ">= 1"})
    num_kv_heads: int = field(metadata={"allowed": ">= 1"})
    intermediate_size: int = field(metadata={"allowed": ">= 1"})
    vocab_size: int = field(metadata={"allowed": ">= 1"})
    max_position: int = field(metadata={"allowed": ">= 1"})

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_heads:
            raise ValueError(f"model.tiny.hidden_size={self.hidden_size} not divisible by num_heads={self.num_heads}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"model.tiny.num_heads={self.num_heads} not divisible by num_kv_heads={self.num_kv_heads}")


@dataclass(frozen=True)
class WarmupConfig:
    """The base policy's SFT warm-up on demonstrations (`model.warmup.*`)."""

    episodes: int = field(metadata={"allowed": ">= 1"})
    epochs: int = field(metadata={"allowed": ">= 1"})
    lr: float = field(metadata={"allowed": "> 0"})
    batch_size: int = field(metadata={"allowed": ">= 1"})
    noise: float = field(metadata={"allowed": "[0, 1]"})
    reflected_noise: float = field(metadata={"allowed": "[0, 1]"})
    missing_tag_rate: float = field(metadata={"allowed": "[0, 1]"})
    # the demonstrations' and initial weights' seed: one base policy for every run seed (as one pretrained model)
    seed: int = field(default=0, metadata={"allowed": SEED})


@dataclass(frozen=True)
class ModelConfig:
    """Which policy to train: an HF checkpoint `path`, a named pretrained `source`, or the embedded tiny one."""

    path: str | None = field(metadata={"allowed": _hf_checkpoint})
    # e.g. smollm2-135m: converted once into an HF directory under cache_dir (model/gguf.py)
    source: str | None = field(metadata={"allowed": "nonempty"})
    cache_dir: str = field(metadata={"allowed": "nonempty"})
    dtype: str = field(metadata={"allowed": ("float32", "bfloat16")})
    tiny: TinyModelConfig | None = field(default=None, metadata={"allowed": "any"})  # the embedded default only
    warmup: WarmupConfig | None = field(default=None, metadata={"allowed": "any"})

    def __post_init__(self) -> None:
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

    name: str = field(metadata={"allowed": _env_name})
    max_turns: int = field(metadata={"allowed": ">= 1"})
    initial_prompt: str = field(metadata={"allowed": "nonempty"})
    options: dict = field(metadata={"allowed": "any"})  # the environment's constructor checks them (below)

    def __post_init__(self) -> None:
        from erl_mega.envs.base import make_env, task_seed

        env = make_env(self.name, max_turns=self.max_turns, **self.options)  # a bad option fails here, at start
        for split in ("train", "test"):  # and a setting that leaves a split without tasks (a few ms per split)
            try:
                env.reset(task_seed(split, 0))
            except RuntimeError as err:
                raise ValueError(f"env={self.name} with max_turns={self.max_turns} and options {self.options} "
                                 f"has no {split} task: {err}") from None


ROLLOUT_BACKENDS = ("local", "server", "sglang")  # in-process | `erl-mega serve` processes | SGLang servers
PLACEMENTS = ("colocated", "disaggregated")
TRANSPORTS = ("shm", "cuda_ipc", "broadcast", "disk")  # how weights reach servers (erl_mega/weights/transport.py)


def _urls(urls: list) -> str | None:
    """http(s) URLs of running SGLang servers"""
    bad = [u for u in urls if not (isinstance(u, str) and u.startswith(("http://", "https://")))]
    return None if not bad else f"must be http(s) URLs of running servers, got {bad[0]!r}"


@dataclass(frozen=True)
class RolloutConfig:
    """Sampling and batching of rollouts, and which engine serves them (`rollout.*`).

    `backend=server|sglang` serves rollouts from separate processes over SGLang's HTTP API, through a
    router when there are several; `placement` says whether they share the trainer's devices (colocated:
    released during the train step, weights by shared memory / CUDA IPC) or have their own
    (disaggregated: weights by a gloo / NCCL broadcast); `transport` overrides that choice.
    """

    temperature: float = field(metadata={"allowed": "(0, 100]"})  # training rollouts sample: greedy (0) is eval's
    top_p: float = field(metadata={"allowed": "(0, 1]"})
    max_new_tokens: int = field(metadata={"allowed": ">= 1"})
    reflect_max_new_tokens: int = field(metadata={"allowed": ">= 1"})
    max_batch_size: int = field(metadata={"allowed": ">= 1"})
    # the reflection role's sampling (the reference: 0.5 / 0.9)
    reflect_temperature: float = field(default=0.5, metadata={"allowed": "(0, 100]"})
    reflect_top_p: float = field(default=0.9, metadata={"allowed": "(0, 1]"})
    backend: str = field(default="local", metadata={"allowed": ROLLOUT_BACKENDS})
    num_servers: int = field(default=1, metadata={"allowed": ">= 1"})  # servers we start (server, sglang)
    placement: str = field(default="colocated", metadata={"allowed": PLACEMENTS})
    transport: str | None = field(default=None, metadata={"allowed": TRANSPORTS})  # None: chosen from placement
    # sglang: attach to these running servers instead of launching `rollout.num_servers`
    urls: list[str] = field(default_factory=list, metadata={"allowed": _urls})
    tp_size: int = field(default=1, metadata={"allowed": ">= 1"})  # sglang --tp-size: GPUs per launched server
    mem_fraction: float = field(default=0.8, metadata={"allowed": "(0, 1)"})  # sglang --mem-fraction-static
    host: str = field(default="127.0.0.1", metadata={"allowed": "nonempty"})  # where launched servers listen
    port: int = field(default=30000, metadata={"allowed": "[1, 65535]"})  # sglang server i listens on port + i
    startup_timeout: float = field(default=600.0, metadata={"allowed": "> 0"})  # seconds until /health answers

    def __post_init__(self) -> None:
        if self.urls and self.backend != "sglang":
            raise ValueError(f"rollout.urls is for rollout.backend=sglang (attach), not {self.backend!r}")


def _agent_entry(entry: str) -> str | None:
    try:
        from erl_mega.sdk import load_agent
    except ImportError as err:
        return f"{err} (the agent SDK needs `pip install erl-mega[agents]`)"
    try:
        load_agent(entry)
    except ValueError as err:
        return str(err)
    return None


@dataclass(frozen=True)
class AgentConfig:
    """Who plays the attempts (`agent.*`): the native loop, or an `@erl_mega.sdk.agent` function through the gateway."""

    entry: str | None = field(default=None, metadata={"allowed": _agent_entry})  # module:name; None: the native loop
    concurrency: int = field(default=8, metadata={"allowed": ">= 1"})  # episodes the agent plays at once (threads)


@dataclass(frozen=True)
class RunConfig:
    """One run: the top-level keys plus one section per concern."""

    steps: int = field(metadata={"allowed": ">= 1"})
    tasks_per_step: int = field(metadata={"allowed": ">= 1"})
    seed: int = field(metadata={"allowed": SEED})
    out_dir: str = field(metadata={"allowed": "nonempty"})  # writable: checked at start (config/preflight.py)
    checkpoint_every: int = field(metadata={"allowed": ">= 0"})  # 0 disables
    resume: bool = field(metadata={"allowed": "any"})
    eval_tasks: int = field(metadata={"allowed": ">= 1"})
    plot: bool = field(metadata={"allowed": "any"})
    model: ModelConfig = field(metadata={"allowed": "any"})
    env: EnvConfig = field(metadata={"allowed": "any"})
    algo: ErlConfig = field(metadata={"allowed": "any"})
    trainer: TrainerConfig = field(metadata={"allowed": "any"})
    rollout: RolloutConfig = field(metadata={"allowed": "any"})
    # steps between held-out evaluations logged as heldout_success; 0: start and end only
    eval_every: int = field(default=0, metadata={"allowed": ">= 0"})
    eval_seed_start: int = field(default=0, metadata={"allowed": "[0, 999999]"})  # first held-out task index (the study's fresh seeds)
    # stop once this many environment steps were sampled; 0: run all `steps`
    env_step_budget: int = field(default=0, metadata={"allowed": ">= 0"})
    overwrite: bool = field(default=False, metadata={"allowed": "any"})  # a fresh run may replace another run's files in out_dir
    agent: AgentConfig = field(default=AgentConfig(), metadata={"allowed": "any"})


def build(cls: type, data: Any, prefix: str = "") -> Any:
    """Build dataclass `cls` from plain data; an unknown key, a wrong type or a broken rule is one ValueError naming it."""
    if not isinstance(data, dict):
        raise ValueError(f"{prefix.rstrip('.') or 'config'} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(f"unknown config key {prefix}{unknown[0]}; known keys here: {sorted(fields)}")
    missing = sorted(name for name, f in fields.items() if name not in data and _required(f))
    if missing:
        raise ValueError(f"missing config key {prefix}{missing[0]}")
    kwargs = {}
    for key, value in data.items():
        kwargs[key] = _coerce(hints[key], value, f"{prefix}{key}")
        reason = None if kwargs[key] is None else problem(rule_of(fields[key]), kwargs[key])
        if reason is not None:
            raise ValueError(f"{prefix}{key}={kwargs[key]!r}: {reason}")
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
