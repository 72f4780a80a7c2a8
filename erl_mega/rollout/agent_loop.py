"""The multi-turn agent loop: environments ⇄ rollout engine, batched across episodes, token-level."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from erl_mega.envs.base import Env
from erl_mega.rollout.chat import ChatFormat
from erl_mega.rollout.engine import GenerationRequest, RolloutEngine, SamplingParams
from erl_mega.rollout.trajectory import Segment, Trajectory, Turn

CONTEXT_LIMIT_FEEDBACK = "Failure: the conversation outgrew the model's context."


@dataclass(frozen=True)
class EpisodeSpec:
    """One episode to play: which environment seed, under which system prompt, with which sampling seed."""

    env_seed: int
    system_prompt: str
    sample_seed: int


@dataclass
class _Live:
    env: Env
    spec: EpisodeSpec
    segments: list[Segment]
    turns: list[Turn]
    task: str = ""
    reward: float = 0.0
    done: bool = False


def play_episodes(
    make_env: Callable[[], Env],
    engine: RolloutEngine,
    chat: ChatFormat,
    specs: list[EpisodeSpec],
    params: SamplingParams,
    max_context: int,
) -> list[Trajectory]:
    """Play every episode to its end; each turn sends all live episodes to the engine as one batch."""
    live = []
    for spec in specs:
        env = make_env()
        first = env.reset(spec.env_seed)
        prefix = Segment(chat.system(spec.system_prompt))
        live.append(_Live(env, spec, [prefix, Segment(chat.user_turn(first.text, after_reply=False))], [], first.text))
    turn = 0
    while True:
        active = [ep for ep in live if not ep.done]
        for ep in active:
            if sum(len(s.token_ids) for s in ep.segments) + params.max_new_tokens > max_context:
                ep.turns.append(Turn("", CONTEXT_LIMIT_FEEDBACK, 0.0))
                ep.done = True
        active = [ep for ep in active if not ep.done]
        if not active:
            break
        requests = [
            GenerationRequest(tuple(t for s in ep.segments for t in s.token_ids), params, _turn_seed(ep.spec, turn))
            for ep in active
        ]
        for ep, out in zip(active, engine.generate(requests)):
            ep.segments.append(Segment(out.token_ids, out.logprobs))
            reply = chat.decode(out.token_ids)
            result = ep.env.step(reply)
            ep.turns.append(Turn(reply, result.feedback, result.reward, result.observation.text))
            ep.reward += result.reward
            if result.done:
                ep.done = True
            else:
                closed = out.finish_reason == "stop"
                ep.segments.append(Segment(chat.user_turn(result.observation.text, True, closed)))
        turn += 1
    version = engine.weight_version
    return [
        Trajectory(tuple(ep.segments), tuple(ep.turns), ep.reward, version, {"task": ep.task}, params.temperature)
        for ep in live
    ]


def complete_once(
    engine: RolloutEngine,
    chat: ChatFormat,
    conversations: list[tuple[str, str]],
    params: SamplingParams,
    sample_seeds: list[int],
    max_context: int,
) -> list[Trajectory]:
    """One reply per (system, user) pair, as single-turn trajectories (the reflection call).

    Callers fit their prompts to the context first (`reflection_request`'s budget); an over-long one here is a bug.
    """
    prompts = [(Segment(chat.system(sys)), Segment(chat.user_turn(user, after_reply=False))) for sys, user in conversations]
    longest = max((len(a.token_ids) + len(b.token_ids) for a, b in prompts), default=0)
    if longest + params.max_new_tokens > max_context:
        raise ValueError(f"a {longest}-token prompt plus {params.max_new_tokens} new tokens exceeds the context of {max_context}")
    requests = [
        GenerationRequest(p[0].token_ids + p[1].token_ids, params, seed) for p, seed in zip(prompts, sample_seeds)
    ]
    outs = engine.generate(requests)
    return [
        Trajectory(p + (Segment(o.token_ids, o.logprobs),), (Turn(chat.decode(o.token_ids), "", 0.0),), 0.0,
                   o.weight_version, temperature=params.temperature)
        for p, o in zip(prompts, outs)
    ]


def _turn_seed(spec: EpisodeSpec, turn: int) -> int:
    # Distinct, reproducible per (episode, turn): results do not depend on which episodes share a batch.
    return spec.sample_seed * 1009 + turn


def prompt_tokens(chat: ChatFormat, system: str, user: str) -> int:
    """Tokens of a (system, user) prompt exactly as `complete_once` sends it."""
    return len(chat.system(system)) + len(chat.user_turn(user, after_reply=False))
