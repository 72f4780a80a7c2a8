"""One episode of a user's agent against the gateway: the context it runs in and the Trajectory it leaves.

    with Episode(gateway_url, env, env_seed=3, system_prompt="...", sampling=..., sample_seed=7) as ctx:
        my_agent(ctx)          # calls ctx.base_url with any OpenAI client; ctx.step(action) plays the environment
    ctx.trajectory             # token-level, exactly the ids the gateway sampled, reward and feedback from the env

The gateway records every call under `ctx.episode_id` and reuses earlier calls' sampled ids when the
agent sends its history back; the trajectory is the chain that ends at the agent's last call.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

import requests

from erl_mega.envs.base import Env, Observation, StepResult
from erl_mega.rollout.agent_loop import CONTEXT_LIMIT_FEEDBACK
from erl_mega.rollout.trajectory import Segment, Trajectory, Turn

EPISODE_HEADER = "X-Episode-Id"  # erl_mega.gateway.routes reads it; the SDK needs no server code
STOPPED_FEEDBACK = "Failure: the agent stopped before the episode ended."


@dataclass(frozen=True)
class Sampling:
    """The run's sampling for an episode; the gateway applies it whatever the agent's requests ask for."""

    temperature: float
    top_p: float
    max_tokens: int


@dataclass
class AgentContext:
    """What an agent function gets: where the model is, which episode it plays, and the environment's door.

    Point any OpenAI client at `base_url` with `api_key` and `model`, and send `headers` (or `user=episode_id`)
    so the calls join this episode. Use `system_prompt` as the system message (the gateway enforces it, so
    ERL's reflected prompt reaches the model even if the agent framework writes its own).
    """

    base_url: str
    api_key: str
    model: str
    episode_id: str
    system_prompt: str
    task: str  # the environment's first observation (the question, the map)
    max_turns: int
    env: Env = field(repr=False)
    turns: list[Turn] = field(default_factory=list)
    done: bool = False

    @property
    def headers(self) -> dict[str, str]:
        return {EPISODE_HEADER: self.episode_id}

    def step(self, action: str) -> StepResult:
        """Play one action in the environment (a tool call, an answer); after the end it only repeats the verdict."""
        if self.done:
            last = self.turns[-1]
            return StepResult(Observation(last.observation), 0.0, True, last.feedback)
        result = self.env.step(action)
        self.turns.append(Turn(action, result.feedback, result.reward, result.observation.text))
        self.done = result.done
        return result


class Episode:
    """A context manager: registers the episode at the gateway, yields its AgentContext, builds its Trajectory.

    `finish(answer)` steps the agent's final answer into the environment if the episode is still open; an
    episode the agent left unfinished ends with reward 0 and STOPPED_FEEDBACK (leaving the block finishes it;
    leaving it by an exception drops the episode and lets the exception through).
    """

    def __init__(self, base_url: str, env: Env, env_seed: int, system_prompt: str, sampling: Sampling | None = None,
                 sample_seed: int | None = None, model: str = "erl-mega", api_key: str = "erl-mega") -> None:
        self.base_url = base_url.rstrip("/")
        self._http = requests.Session()
        task = env.reset(env_seed).text
        self.ctx = AgentContext(self.base_url, api_key, model, f"ep-{uuid.uuid4().hex}", system_prompt, task,
                                env.max_turns, env)
        self._start = {"episode_id": self.ctx.episode_id, "system_prompt": system_prompt, "seed": sample_seed}
        if sampling is not None:  # else each request's own sampling applies
            self._start |= {"temperature": sampling.temperature, "top_p": sampling.top_p, "max_tokens": sampling.max_tokens}
        self.trajectory: Trajectory | None = None

    def __enter__(self) -> AgentContext:
        self._post("/episodes", self._start)
        return self.ctx

    def finish(self, answer: str | None, error: BaseException | None = None) -> Trajectory:
        """End the episode (the agent's final answer, or what stopped it) and build its Trajectory."""
        ctx = self.ctx
        if answer is not None and not ctx.done:
            ctx.step(answer)
        if not ctx.done:
            feedback = CONTEXT_LIMIT_FEEDBACK if _context_exceeded(error) else STOPPED_FEEDBACK
            ctx.turns.append(Turn(answer or "", feedback, 0.0))
        trace = self._get(f"/episodes/{ctx.episode_id}")
        self._http.delete(f"{self.base_url}/episodes/{ctx.episode_id}", timeout=30)
        self.trajectory = to_trajectory(trace, ctx, error)
        return self.trajectory

    def __exit__(self, kind, error, tb) -> bool:
        if kind is not None:  # the agent's own exception: nothing to train on; it propagates
            self._http.delete(f"{self.base_url}/episodes/{self.ctx.episode_id}", timeout=30)
        elif self.trajectory is None:
            self.finish(None)
        return False

    def _post(self, path: str, body: dict) -> dict:
        r = self._http.post(f"{self.base_url}{path}", json=body, timeout=30)
        r.raise_for_status()
        return r.json()

    def _get(self, path: str) -> dict:
        r = self._http.get(f"{self.base_url}{path}", timeout=30)
        r.raise_for_status()
        return r.json()


def _context_exceeded(error: BaseException | None) -> bool:
    return error is not None and "context_length_exceeded" in str(error)


def to_trajectory(trace: dict, ctx: AgentContext, error: BaseException | None = None) -> Trajectory:
    """The gateway's trace of one episode as the Trajectory the native loop makes (segment 0: the system message)."""
    if not trace["segments"]:
        raise RuntimeError(f"episode {ctx.episode_id}: the agent made no chat call through the gateway "
                           f"({type(error).__name__ + ': ' + str(error) if error else 'it returned without one'})")
    segments = tuple(Segment(tuple(s["token_ids"]), None if s["logprobs"] is None else tuple(s["logprobs"]))
                     for s in trace["segments"])
    if trace["temperature"] is None:
        raise RuntimeError(f"episode {ctx.episode_id}: its calls were sampled at different temperatures")
    meta = {"task": ctx.task, "episode_id": ctx.episode_id, "prefix_mismatches": trace["prefix_mismatches"],
            "calls": len(trace["calls"]), "calls_outside_trajectory": trace["calls_outside_trajectory"],
            "weight_versions": trace["weight_versions"],
            "agent_error": None if error is None else f"{type(error).__name__}: {error}"[:300]}
    reward = sum(t.reward for t in ctx.turns)
    return Trajectory(segments, tuple(ctx.turns), reward, trace["weight_version"], meta, trace["temperature"])
