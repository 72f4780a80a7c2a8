"""The prompts ERL speaks in, the reflection request (as the reference builds it), and parsing its answer.

The request shows the task, up to `max_attempts` recent attempts with per-step observation / action /
reward, each attempt's feedback and the batch metrics, under the header the reference uses, and fits a
token budget: the oldest attempts go first, then observations are shortened; `None` when even that fails.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

from erl_mega.envs.base import tag_blocks
from erl_mega.rollout.trajectory import Trajectory

INITIAL_PROMPT = "You are an agent in a grid world. Reach the target cell."
REFLECTION_SYSTEM = "You improve the instructions of an agent from its attempts and their feedback."
REFLECTION_ASK = "Write better instructions for the next attempt inside <prompt></prompt>."
MEMORY_HEADER = "Inferred information from past attempts (may be inaccurate):"
OBSERVATION_CAPS = (None, 400, 160, 60, 20, 0)  # characters per observation, tried in turn once one attempt is left
STEP_CAPS = (8, 4, 2, 0)  # then only the last steps of that attempt


FACT_RE = re.compile(r"\b(hole|goal|box|target)e?s? \((\S)\)")  # how the environments' feedback names a role's symbol


def state_facts(facts: dict[str, str]) -> str:
    """The sentence a reflection writes for what it learnt ("The hole is x. The goal is *.")."""
    return " ".join(f"The {role} is {symbol}." for role, symbol in facts.items())


def facts_in(text: str) -> dict[str, str]:
    """The role -> symbol facts a feedback line reveals (first mention of each role wins)."""
    found: dict[str, str] = {}
    for role, symbol in FACT_RE.findall(text):
        found.setdefault(role, symbol)
    return found


def with_action_format(prompt: str, action_format: str) -> str:
    """A system prompt plus the environment's action-format reminder."""
    return f"{prompt}\n{action_format}"


def _cut(text: str, cap: int | None) -> str:
    return text if cap is None or len(text) <= cap else text[:cap] + "…"


def attempt_block(attempt: Trajectory, index: int, parse_action: Callable[[str], str | None], cap: int | None,
                  last_steps: int | None = None) -> str:
    """One attempt: per step the action the environment played, its reward and what came back, then the verdict."""
    lines = [f"Attempt {index} (reward {attempt.reward:g}):"]
    first = 0 if last_steps is None else max(len(attempt.turns) - last_steps, 0)
    if first:
        lines.append(f"  ({first} earlier steps not shown)")
    for step, turn in enumerate(attempt.turns[first:], first + 1):
        action = parse_action(turn.reply)
        shown = action if action is not None else f"invalid reply {_cut(' '.join(turn.reply.split()), 40)!r}"
        lines.append(f"  step {step}: action {shown}; reward {turn.reward:g}; observation: {_cut(turn.observation, cap)}")
    lines.append(f"  Feedback: {attempt.feedback}")
    return "\n".join(lines)


def reflection_request(
    current_prompt: str,
    attempts: list[Trajectory],
    batch_success: float,
    parse_action: Callable[[str], str | None],
    count_tokens: Callable[[str], int],
    budget: int,
    max_attempts: int = 8,
    ask: str = REFLECTION_ASK,
) -> str | None:
    """The reflection's user message for one task (attempts oldest first), within `budget` tokens, or None."""
    recent = attempts[-max_attempts:]
    if not recent:
        raise ValueError("reflection_request() needs at least one attempt")
    task = recent[0].meta.get("task", "")
    newest = len(recent) - 1
    plans = [(first, None, None) for first in range(len(recent))] + [(newest, cap, None) for cap in OBSERVATION_CAPS[1:]]
    plans += [(newest, 0, steps) for steps in STEP_CAPS]
    for first, cap, steps in plans:  # oldest attempts go first, then observations shrink, then early steps go
        shown = recent[first:]
        blocks = "\n".join(attempt_block(a, i, parse_action, cap, steps) for i, a in enumerate(shown, 1))
        solved = sum(a.reward >= 1 for a in shown)
        text = (
            f"{MEMORY_HEADER}\n{current_prompt}\n\n"
            f"Task:\n{_cut(task, cap)}\n\n{blocks}\n\n"
            f"Batch metrics: success rate {round(100 * batch_success)}%; these attempts: {solved} of {len(shown)} solved.\n"
            f"{ask}"
        ).rstrip()
        if count_tokens(text) <= budget:
            return text
    return None


@dataclass(frozen=True)
class ParsedReflection:
    """The new system prompt, and whether the tag was missing (then the current prompt is kept)."""

    prompt: str
    tag_missing: bool


def parse_reflection(text: str, current_prompt: str) -> ParsedReflection:
    """Take the first non-empty `<prompt>` block (linear time); missing or empty falls back to the current prompt."""
    for block in tag_blocks(text, "<prompt>", "</prompt>"):
        if block.strip():
            return ParsedReflection(block.strip(), False)
    return ParsedReflection(current_prompt, True)
