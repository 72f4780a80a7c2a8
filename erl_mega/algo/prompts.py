"""The prompts ERL speaks in, and parsing of the reflection's `<prompt>…</prompt>` answer."""

from __future__ import annotations

import re
from dataclasses import dataclass

from erl_mega.rollout.trajectory import Trajectory

INITIAL_PROMPT = "You are an agent in a grid world. Reach the target cell."
REFLECTION_SYSTEM = "You improve the instructions of an agent from its attempts and their feedback."
REFLECTION_ASK = "Write better instructions for the next attempt inside <prompt></prompt>."
PROMPT_RE = re.compile(r"<prompt>(.*?)</prompt>", re.DOTALL)


def with_action_format(prompt: str, action_format: str) -> str:
    """A system prompt plus the environment's action-format reminder."""
    return f"{prompt}\n{action_format}"


def trace_line(attempt: Trajectory, index: int, max_turns_shown: int = 12) -> str:
    """One attempt as 'Attempt i: move, move, … -> feedback' (actions only; raw observations stay out)."""
    moves = [_short(t.reply) for t in attempt.turns[:max_turns_shown]]
    return f"Attempt {index}: {', '.join(moves)} -> {attempt.feedback}"


def reflection_request(current_prompt: str, success_rate: float, attempts: list[Trajectory]) -> str:
    """The reflection call's user message: current instructions, batch metrics, traces and feedback."""
    traces = "\n".join(trace_line(a, i + 1) for i, a in enumerate(attempts))
    return (
        f"Current instructions: {current_prompt}\n"
        f"Batch success rate: {round(100 * success_rate)}%.\n"
        f"{traces}\n{REFLECTION_ASK}"
    )


@dataclass(frozen=True)
class ParsedReflection:
    """The new system prompt, and whether the tag was missing (then the current prompt is kept)."""

    prompt: str
    tag_missing: bool


def parse_reflection(text: str, current_prompt: str) -> ParsedReflection:
    """Take the first non-empty `<prompt>` block; missing or empty falls back to the current prompt."""
    for block in PROMPT_RE.findall(text):
        if block.strip():
            return ParsedReflection(block.strip(), False)
    return ParsedReflection(current_prompt, True)


def _short(reply: str) -> str:
    from_tag = re.search(r"<action>\s*(\w+)\s*</action>", reply)
    if from_tag:
        return from_tag.group(1)
    flat = " ".join(reply.split())
    return f'"{flat[:24]}"' if flat else '""'
