"""Token-exact trace capture: each call's ids, log-probs and weight version, chained into episodes.

When an agent sends its history back, the prompt reuses the ids already sampled for the earlier
assistant turns wherever the history matches a recorded call (same system text and tools, same
messages, the same reply we returned), and tokenises only the new messages. A history with an
assistant turn that matches no recorded call is a *prefix mismatch*: the matching prefix is still
reused, the rest is tokenised as context (never as sampled tokens), and the call is counted and
reported (`X-Prompt-Origin: mismatch`), never merged silently.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field

from erl_mega.gateway.template import GENERATION_PROMPT, Message, render_messages
from erl_mega.rollout.chat import IM_END, ChatFormat
from erl_mega.rollout.trajectory import Segment

MAX_EPISODES = 4096  # episodes kept in memory; the oldest is dropped first


@dataclass(frozen=True)
class Prompt:
    """The prompt of one call as segments: reused ones (sampled ids included) then the newly tokenised one."""

    segments: tuple[Segment, ...]
    origin: str  # "fresh" (no earlier assistant turn), "reused" or "mismatch"
    parent: int | None  # index of the call whose ids were reused
    reused_tokens: int

    @property
    def ids(self) -> tuple[int, ...]:
        return tuple(t for s in self.segments for t in s.token_ids)


@dataclass(frozen=True)
class CallRecord:
    """One sampled choice: the token chain up to and including its reply, and how its prompt was made."""

    index: int
    parent: int | None
    segments: tuple[Segment, ...]  # ends with the sampled reply
    head: str  # rendered system message (tools included): chat calls chain only under the same head
    history: tuple[Message, ...] | None  # chat: the request's messages after the system one; None: /v1/completions
    reply: Message | None  # chat: the parsed reply as the agent will send it back
    text: str  # completions: prompt text + the raw sampled text (special tokens kept), the reuse key
    reply_text: str
    closed: bool  # the reply ended with the stop token
    origin: str
    reused_tokens: int
    prompt_tokens: int
    weight_version: int
    temperature: float
    finish_reason: str


@dataclass(frozen=True)
class EpisodeSampling:
    """The sampling a trainer registers for an episode: it wins over what the agent's requests ask for."""

    temperature: float
    top_p: float
    max_tokens: int  # a cap: requests may ask for fewer


@dataclass
class EpisodeTrace:
    """Every call of one episode; the system prompt, seed and sampling the SDK registered for it, if any."""

    system_prompt: str | None = None
    seed: int | None = None
    sampling: EpisodeSampling | None = None
    calls: list[CallRecord] = field(default_factory=list)
    prefix_mismatches: int = 0

    def chat_prompt(self, chat: ChatFormat, head: str, messages: tuple[Message, ...]) -> Prompt:
        """The prompt ids for `messages` under `head`, reusing the longest matching recorded chain."""
        best = None
        for rec in self.calls:
            k = len(rec.history or ()) if rec.reply is not None else -1
            if (k >= 0 and rec.head == head and k < len(messages) - 1 and messages[:k] == rec.history
                    and messages[k] == rec.reply and (best is None or k > len(best.history))):
                best = rec
        skip = len(best.history) + 1 if best is not None else 0
        # an assistant turn past the reused prefix was not sampled here (or was edited): counted, never passed off
        origin = "mismatch" if any(m.role == "assistant" for m in messages[skip:]) else "reused" if best else "fresh"
        self.prefix_mismatches += origin == "mismatch"
        if best is not None:
            lead = "\n" if best.closed else f"{IM_END}\n"
            new = chat.encode(lead + render_messages(messages[skip:]) + GENERATION_PROMPT)
            reused = sum(len(s.token_ids) for s in best.segments)
            return Prompt(best.segments + (Segment(new),), origin, best.index, reused)
        body = chat.encode(render_messages(messages) + GENERATION_PROMPT)
        return Prompt((Segment(chat.encode(head)), Segment(body)), origin, None, 0)

    def text_prompt(self, chat: ChatFormat, prompt: str | list[int]) -> Prompt:
        """A /v1/completions prompt: text or ids extending a recorded call reuse its ids."""
        ids_prompt = not isinstance(prompt, str)
        for rec in reversed(self.calls):
            if rec.history is not None:
                continue
            chain = tuple(t for s in rec.segments for t in s.token_ids)
            if ids_prompt and len(prompt) > len(chain) and tuple(prompt[: len(chain)]) == chain:
                new = tuple(prompt[len(chain) :])
            elif not ids_prompt and len(prompt) > len(rec.text) and prompt.startswith(rec.text):
                new = chat.encode(prompt[len(rec.text) :])
            else:
                continue
            return Prompt(rec.segments + (Segment(new),), "reused", rec.index, len(chain))
        return Prompt((Segment(tuple(prompt) if ids_prompt else chat.encode(prompt)),), "fresh", None, 0)

    def chain(self) -> list[CallRecord]:
        """The calls that make the episode's trajectory: the last call and its ancestors, oldest first."""
        out, at = [], len(self.calls) - 1 if self.calls else None
        while at is not None:
            out.append(self.calls[at])
            at = self.calls[at].parent
        return out[::-1]

    def to_json(self) -> dict:
        """The episode as plain data: the final chain's segments plus every call's summary."""
        chain = self.chain()
        temps = {c.temperature for c in chain}
        last = chain[-1] if chain else None
        return {
            "segments": [{"token_ids": list(s.token_ids), "logprobs": None if s.logprobs is None else list(s.logprobs)}
                         for s in (last.segments if last else ())],
            "replies": [c.reply_text for c in chain],
            "weight_versions": [c.weight_version for c in chain],
            "weight_version": last.weight_version if last else None,
            "temperature": temps.pop() if len(temps) == 1 else None,
            "prefix_mismatches": self.prefix_mismatches,
            "calls_outside_trajectory": len(self.calls) - len(chain),
            "calls": [{"index": c.index, "parent": c.parent, "origin": c.origin, "reused_tokens": c.reused_tokens,
                       "prompt_tokens": c.prompt_tokens, "completion_tokens": len(c.segments[-1].token_ids),
                       "weight_version": c.weight_version, "temperature": c.temperature,
                       "finish_reason": c.finish_reason} for c in self.calls],
        }


class TraceStore:
    """Episodes by id, thread-safe; requests without an episode id are served but not recorded."""

    def __init__(self, capacity: int = MAX_EPISODES) -> None:
        self.capacity = capacity
        self._episodes: OrderedDict[str, EpisodeTrace] = OrderedDict()
        self.lock = threading.Lock()

    def episode(self, episode_id: str) -> EpisodeTrace:
        """The episode of that id, created empty on first use."""
        if episode_id not in self._episodes:
            self._episodes[episode_id] = EpisodeTrace()
            while len(self._episodes) > self.capacity:
                self._episodes.popitem(last=False)
        return self._episodes[episode_id]

    def register(self, episode_id: str, system_prompt: str | None, seed: int | None,
                 sampling: EpisodeSampling | None = None) -> None:
        """Start (or restart) an episode: its calls get `system_prompt` as their system message and `sampling`."""
        self._episodes.pop(episode_id, None)
        episode = self.episode(episode_id)
        episode.system_prompt, episode.seed, episode.sampling = system_prompt, seed, sampling

    def get(self, episode_id: str) -> EpisodeTrace | None:
        return self._episodes.get(episode_id)

    def pop(self, episode_id: str) -> EpisodeTrace | None:
        return self._episodes.pop(episode_id, None)
