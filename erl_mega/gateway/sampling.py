"""One gateway call against a RolloutEngine: n choices, stop strings, and the record of each in its episode."""

from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass

from erl_mega.gateway.protocol import GatewayError
from erl_mega.gateway.template import Message
from erl_mega.gateway.traces import CallRecord, EpisodeTrace, Prompt
from erl_mega.rollout.chat import ChatFormat
from erl_mega.rollout.engine import Completion, GenerationRequest, RolloutEngine, SamplingParams
from erl_mega.rollout.trajectory import Segment


@dataclass(frozen=True)
class Choice:
    """One sampled continuation as kept in the trace (cut after a stop string) and its visible text."""

    token_ids: tuple[int, ...]
    logprobs: tuple[float, ...]
    text: str  # what the client sees: special tokens dropped, the stop string and what follows it cut
    raw_text: str  # the kept ids decoded with special tokens: the /v1/completions reuse key
    finish_reason: str  # "stop" | "length"
    weight_version: int


@dataclass(frozen=True)
class CallSpec:
    """What the endpoint asks of the engine for one request."""

    prompt: Prompt
    n: int
    temperature: float
    top_p: float
    max_tokens: int | None
    stops: tuple[str, ...]
    seed: int | None
    session: str | None = None  # the episode id: a router keeps an episode's calls on one server


class Sampler:
    """Runs calls through one engine: one at a time unless it takes `concurrent` calls (a scheduler, a router)."""

    def __init__(self, engine: RolloutEngine, chat: ChatFormat, max_context: int, default_max_tokens: int,
                 concurrent: bool = False) -> None:
        self.engine, self.chat = engine, chat
        self.max_context, self.default_max_tokens = max_context, default_max_tokens
        self._lock = contextlib.nullcontext() if concurrent else threading.Lock()

    def sample(self, spec: CallSpec) -> list[Choice]:
        """n choices for the prompt; a prompt that leaves no room for one new token is a 400."""
        room = self.max_context - len(spec.prompt.ids)
        budget = spec.max_tokens or min(self.default_max_tokens, room)
        if budget > room or room < 1:
            raise GatewayError(
                f"the prompt has {len(spec.prompt.ids)} tokens and asks for {budget} more; the context holds "
                f"{self.max_context}", "max_tokens", code="context_length_exceeded")
        params = SamplingParams(budget, spec.temperature, spec.top_p, self.chat.stop_ids)
        seeds = [None if spec.seed is None else spec.seed + i for i in range(spec.n)]
        requests = [GenerationRequest(spec.prompt.ids, params, seed, spec.session) for seed in seeds]
        with self._lock:
            outs = self.engine.generate(requests)
        return [self._cut(out, spec.stops) for out in outs]

    def _cut(self, out: Completion, stops: tuple[str, ...]) -> Choice:
        """Keep the ids up to the token that completes the first stop string; the text ends before it."""
        ids, lps, finish = out.token_ids, out.logprobs, out.finish_reason
        text = self.chat.decode(ids)
        hits = [(text.find(s), s) for s in stops if s in text]
        if hits:
            at, stop = min(hits)
            keep = next(k for k in range(1, len(ids) + 1) if len(self.chat.decode(ids[:k])) >= at + len(stop))
            ids, lps, finish, text = ids[:keep], lps[:keep], "stop", text[:at]
        raw = self.chat.tokenizer.decode(list(ids), skip_special_tokens=False)
        return Choice(ids, lps, text, raw, finish, out.weight_version)


def record(episode: EpisodeTrace, spec: CallSpec, choice: Choice, head: str, history: tuple[Message, ...] | None,
           reply: Message | None, prompt_text: str, chat: ChatFormat) -> CallRecord:
    """Append one choice to its episode's calls and return the record."""
    rec = CallRecord(
        index=len(episode.calls), parent=spec.prompt.parent,
        segments=spec.prompt.segments + (Segment(choice.token_ids, choice.logprobs),),
        head=head, history=history, reply=reply, text=prompt_text + choice.raw_text, reply_text=choice.text,
        closed=bool(choice.token_ids) and choice.token_ids[-1] in chat.stop_ids,
        origin=spec.prompt.origin, reused_tokens=spec.prompt.reused_tokens, prompt_tokens=len(spec.prompt.ids),
        weight_version=choice.weight_version, temperature=spec.temperature, finish_reason=choice.finish_reason,
    )
    episode.calls.append(rec)
    return rec


def call_spec(prompt: Prompt, n: int, temperature: float, top_p: float, max_tokens: int | None, stops: tuple[str, ...],
              seed: int | None, episode: EpisodeTrace, session: str | None) -> CallSpec:
    """The engine call for one request; an episode's registered sampling wins over the request's own."""
    s = episode.sampling
    if s is not None:
        temperature, top_p, max_tokens = s.temperature, s.top_p, min(max_tokens or s.max_tokens, s.max_tokens)
    return CallSpec(prompt, n, temperature, top_p, max_tokens, stops, call_seed(seed, episode), session)


def call_seed(request_seed: int | None, episode: EpisodeTrace | None) -> int | None:
    """The request's seed, else one derived from the episode's registered seed and its call count."""
    if request_seed is not None or episode is None or episode.seed is None:
        return request_seed
    return (episode.seed * 1009 + len(episode.calls)) * 16  # room for n <= 16 choices per call
