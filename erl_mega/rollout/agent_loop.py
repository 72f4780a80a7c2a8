"""The multi-turn agent loop: environments ⇄ rollout engine, token-level.

Two schedules over the same per-episode steps: with an in-process engine every turn sends all live
episodes as one batch; with servers (a `ConcurrentEngine`) each episode sends its next turn as soon as
its last reply was played, so no episode waits for the slowest of the batch. Turn seeds depend only on
(episode, turn), so both schedules sample the same tokens.
"""

from __future__ import annotations

from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Callable

from erl_mega.envs.base import Env
from erl_mega.rollout.chat import ChatFormat
from erl_mega.rollout.engine import Completion, ConcurrentEngine, GenerationRequest, RolloutEngine, SamplingParams
from erl_mega.rollout.trajectory import Segment, Trajectory, Turn

CONTEXT_LIMIT_FEEDBACK = "Failure: the conversation outgrew the model's context."
MAX_CONCURRENT_EPISODES = 256  # threads waiting on server replies (each mostly blocked on HTTP)


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
    versions: list[int] = field(default_factory=list)  # weight version of each reply

    def next_request(self, params: SamplingParams, max_context: int) -> GenerationRequest | None:
        """The next turn's request, or None (and done) when the reply could not fit the context."""
        if sum(len(s.token_ids) for s in self.segments) + params.max_new_tokens > max_context:
            self.turns.append(Turn("", CONTEXT_LIMIT_FEEDBACK, 0.0))
            self.done = True
            return None
        # the session keeps an episode's turns on one server, where its prefix is cached
        return GenerationRequest(tuple(t for s in self.segments for t in s.token_ids), params,
                                 _turn_seed(self.spec, len(self.turns)), session=f"episode-{self.spec.sample_seed}")

    def play(self, out: Completion, chat: ChatFormat) -> None:
        """Append the reply, step the environment with its text, append the environment's answer."""
        self.segments.append(Segment(out.token_ids, out.logprobs))
        self.versions.append(out.weight_version)
        reply = chat.decode(out.token_ids)
        result = self.env.step(reply)
        self.turns.append(Turn(reply, result.feedback, result.reward, result.observation.text))
        self.reward += result.reward
        if result.done:
            self.done = True
        else:
            closed = out.finish_reason == "stop"
            self.segments.append(Segment(chat.user_turn(result.observation.text, True, closed)))


def play_episodes(
    make_env: Callable[[], Env],
    engine: RolloutEngine,
    chat: ChatFormat,
    specs: list[EpisodeSpec],
    params: SamplingParams,
    max_context: int,
) -> list[Trajectory]:
    """Play every episode to its end: per episode with a `ConcurrentEngine`, else batched per turn."""
    live = []
    for spec in specs:
        env = make_env()
        first = env.reset(spec.env_seed)
        prefix = Segment(chat.system(spec.system_prompt))
        live.append(_Live(env, spec, [prefix, Segment(chat.user_turn(first.text, after_reply=False))], [], first.text))
    if isinstance(engine, ConcurrentEngine):
        _play_independently(live, engine, chat, params, max_context)
    else:
        _play_batched(live, engine, chat, params, max_context)
    return [
        # an episode is as old as its oldest reply (every reply's log-probs are its own version's)
        Trajectory(tuple(ep.segments), tuple(ep.turns), ep.reward, min(ep.versions, default=engine.weight_version),
                   {"task": ep.task}, params.temperature)
        for ep in live
    ]


def _play_batched(live: list[_Live], engine: RolloutEngine, chat: ChatFormat, params: SamplingParams,
                  max_context: int) -> None:
    """Each turn: one `generate` call over every live episode."""
    while True:
        pending = [(ep, r) for ep in live if not ep.done and (r := ep.next_request(params, max_context)) is not None]
        if not pending:
            return
        for (ep, _), out in zip(pending, engine.generate([r for _, r in pending])):
            ep.play(out, chat)


def _play_independently(live: list[_Live], engine: ConcurrentEngine, chat: ChatFormat, params: SamplingParams,
                        max_context: int) -> None:
    """Requests run on worker threads; this thread plays each reply as it lands and sends that episode's next turn.

    Environments and the tokenizer are touched only here, so they need not be thread-safe.
    """
    with ThreadPoolExecutor(max(1, min(len(live), MAX_CONCURRENT_EPISODES))) as pool:
        inflight = {}

        def send(ep: _Live) -> None:
            request = ep.next_request(params, max_context)
            if request is not None:
                inflight[pool.submit(engine.generate_one, request)] = ep

        for ep in live:
            send(ep)
        while inflight:
            finished, _ = wait(inflight, return_when=FIRST_COMPLETED)
            for future in finished:
                ep = inflight.pop(future)
                ep.play(future.result(), chat)
                if not ep.done:
                    send(ep)


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
