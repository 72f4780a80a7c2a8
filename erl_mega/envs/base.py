"""The environment contract: text in, text out, deterministic given the seed."""

from __future__ import annotations

import hashlib
import inspect
from dataclasses import dataclass
from typing import Callable, Protocol


@dataclass(frozen=True)
class Observation:
    """What the agent sees at the start of an episode or after a step."""

    text: str


@dataclass(frozen=True)
class StepResult:
    """One environment transition; `feedback` is the textual verdict the reflection step reads."""

    observation: Observation
    reward: float
    done: bool
    feedback: str


class Env(Protocol):
    """A text environment. `step` never raises on agent text: unparseable actions are feedback."""

    name: str
    max_turns: int
    action_format: str  # one line telling the agent how to answer, appended to every system prompt

    def reset(self, seed: int) -> Observation: ...

    def step(self, action: str) -> StepResult: ...

    def parse_action(self, reply: str) -> str | None:
        """The action `step` would play for `reply` (None when it is malformed): the only parser of replies."""
        ...


EnvFactory = Callable[..., Env]
_REGISTRY: dict[str, EnvFactory] = {}


def register_env(name: str) -> Callable[[EnvFactory], EnvFactory]:
    """Decorator: make an environment selectable by `env.name=<name>`."""

    def wrap(factory: EnvFactory) -> EnvFactory:
        if name in _REGISTRY:
            raise ValueError(f"environment {name!r} registered twice")
        _REGISTRY[name] = factory
        return factory

    return wrap


def env_names() -> list[str]:
    """Names accepted by `env.name`."""
    from erl_mega import envs  # noqa: F401  (importing the package registers every environment)

    return sorted(_REGISTRY)


def make_env(name: str, **kwargs) -> Env:
    """Build a registered environment; an unknown name is one clear error listing the known ones."""
    names = env_names()
    if name not in _REGISTRY:
        raise ValueError(f"env.name={name!r} is not an environment; choose one of {names}")
    factory = _REGISTRY[name]
    try:
        inspect.signature(factory).bind(**kwargs)
    except TypeError as err:
        raise ValueError(f"env {name!r}: bad options {sorted(kwargs)}: {err}") from None
    return factory(**kwargs)


SYMBOL_POOL = "x*o#+$=~"  # symbols a hidden fact may be drawn with (the warm-up draws its worlds' facts here)


def check_symbols(facts: dict[str, str], reserved: str) -> None:
    """Each role a distinct single character, none of the environment's fixed symbols (ValueError otherwise)."""
    for role, symbol in facts.items():
        if len(symbol) != 1 or symbol in reserved or symbol.isspace():
            raise ValueError(f"env.options.{role}={symbol!r}; must be one character, not whitespace nor one of {reserved!r}")
    if len(set(facts.values())) != len(facts):
        raise ValueError(f"env.options {facts}: each role needs its own symbol")


TEST_SEED_OFFSET = 1_000_000  # train seeds are [0, 1e6), held-out seeds [1e6, ...): disjoint by construction


def task_seed(split: str, index: int) -> int:
    """The environment seed of task `index` in `split` ('train' or 'test')."""
    if split not in ("train", "test"):
        raise ValueError(f"split={split!r}; choose 'train' or 'test'")
    if not 0 <= index < TEST_SEED_OFFSET:
        raise ValueError(f"task index {index} outside [0, {TEST_SEED_OFFSET})")
    return index if split == "train" else TEST_SEED_OFFSET + index


HELD_OUT_SHARE = 8  # one task content in 8 is held out: contents, not seeds, decide the split


def content_split(content: str) -> str:
    """'test' for the 1-in-8 contents that are held out, else 'train': disjoint by content for any seeds."""
    return "test" if hashlib.sha256(content.encode()).digest()[0] % HELD_OUT_SHARE == 0 else "train"


def split_of(seed: int) -> str:
    """The split a seed draws its content from."""
    return "train" if seed < TEST_SEED_OFFSET else "test"


def tag_blocks(text: str, open_tag: str, close_tag: str, ignore_case: bool = False) -> list[str]:
    """What `re.findall(open(.*?)close, DOTALL)` returns, in linear time (no rescans of unclosed tags)."""
    hay = text.lower() if ignore_case else text
    opener, closer = (open_tag.lower(), close_tag.lower()) if ignore_case else (open_tag, close_tag)
    blocks, at = [], 0
    while (start := hay.find(opener, at)) >= 0:
        end = hay.find(closer, start + len(opener))
        if end < 0:
            break  # no later opener can be closed either
        blocks.append(text[start + len(opener) : end])
        at = end + len(closer)
    return blocks
