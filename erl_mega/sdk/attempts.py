"""`@agent` turns a user's agent function into ERL's attempt strategy, played through the gateway.

    @agent
    def my_agent(ctx: AgentContext) -> str | None:    # returns the final answer (or None if it stepped it)
        ...

`erl-mega train agent.entry=my_pkg.my_module:my_agent` then plays attempt 1 and attempt 2 (under the
reflected system prompt) and the held-out evaluation with it; reflections stay the workflow's own call.
"""

from __future__ import annotations

import importlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable

import openai

from erl_mega.envs.base import Env
from erl_mega.rollout.agent_loop import EpisodeSpec
from erl_mega.rollout.engine import RolloutEngine, SamplingParams
from erl_mega.rollout.local import LocalEngine
from erl_mega.rollout.chat import ChatFormat
from erl_mega.rollout.trajectory import Trajectory
from erl_mega.sdk.episode import AgentContext, Episode, Sampling

AgentFn = Callable[[AgentContext], "str | None"]


@dataclass(frozen=True)
class Agent:
    """A user's agent function, runnable for one task against a gateway."""

    fn: AgentFn
    name: str

    def run(self, base_url: str, env: Env, spec: EpisodeSpec, sampling: Sampling, model: str = "erl-mega") -> Trajectory:
        """Play `spec`'s task under its system prompt; the gateway's refusals (4xx, e.g. the context is full) end
        the episode and are kept in its meta; any other exception is the agent's bug and propagates."""
        episode = Episode(base_url, env, spec.env_seed, spec.system_prompt, sampling, spec.sample_seed, model)
        with episode as ctx:
            try:
                answer, error = self.fn(ctx), None
            except openai.APIStatusError as err:
                answer, error = None, err
            return episode.finish(answer, error)


def agent(fn: AgentFn) -> Agent:
    """Decorator: make `fn(ctx) -> final answer | None` an agent the ERL workflow can train."""
    return Agent(fn, fn.__name__)


def load_agent(entry: str) -> Agent:
    """`module:name` of an `@agent` function; ValueError saying what is wrong with `entry`."""
    module_name, sep, attr = entry.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError("write module:name, e.g. erl_mega.agents.langgraph_qa:langgraph_qa")
    try:
        found = getattr(importlib.import_module(module_name), attr)
    except ImportError as err:
        raise ValueError(f"{err} (the bundled agents need `pip install erl-mega[agents]`)") from None
    except AttributeError as err:
        raise ValueError(str(err)) from None
    if not isinstance(found, Agent):
        raise ValueError(f"{entry} is a {type(found).__name__}; decorate it with @erl_mega.sdk.agent")
    return found


class GatewayAttempts:
    """ERL's attempts played by an Agent through a gateway URL, `concurrency` episodes at a time."""

    def __init__(self, agent_: Agent, base_url: str, make_env: Callable[[], Env], concurrency: int,
                 model: str = "erl-mega", closers: tuple[Callable[[], None], ...] = ()) -> None:
        self.agent, self.base_url, self.make_env = agent_, base_url, make_env
        self.concurrency, self.model, self._closers = concurrency, model, closers

    @classmethod
    def in_process(cls, agent_: Agent, engine: RolloutEngine, chat: ChatFormat, make_env: Callable[[], Env],
                   max_context: int, concurrency: int) -> "GatewayAttempts":
        """Serve a gateway over the run's engine from a thread of this process and play through it.

        The in-process engine gets a Scheduler, which batches the concurrent agents' calls (weight syncs reach
        it between steps, when no agent runs); a router or server client takes concurrent calls as it is.
        """
        from erl_mega.gateway.mount import ScheduledEngine
        from erl_mega.gateway.serve import ServerThread, gateway_app
        from erl_mega.rollout.server.scheduler import Scheduler

        closers = []
        if isinstance(engine, LocalEngine):
            scheduler = Scheduler(engine)
            engine, closers = ScheduledEngine(scheduler), [scheduler.stop]
        app, _ = gateway_app(engine, chat, "erl-mega", max_context, concurrent=True)
        server = ServerThread(app)
        return cls(agent_, server.url, make_env, concurrency, closers=(server.close, *closers))

    def play(self, specs: list[EpisodeSpec], params: SamplingParams) -> list[Trajectory]:
        """One Trajectory per spec, in order; sampled as `params` say, whatever the agent asks for."""
        sampling = Sampling(params.temperature, params.top_p, params.max_new_tokens)

        def one(spec: EpisodeSpec) -> Trajectory:
            return self.agent.run(self.base_url, self.make_env(), spec, sampling, self.model)

        with ThreadPoolExecutor(max(1, min(self.concurrency, len(specs)))) as pool:
            return list(pool.map(one, specs))

    def close(self) -> None:
        """Stop what `in_process` started (nothing for a gateway elsewhere)."""
        for close in self._closers:
            close()
