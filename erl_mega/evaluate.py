"""Held-out evaluation: first attempt only, initial prompt, greedy; the metric that matters at deployment."""

from __future__ import annotations

from dataclasses import dataclass

from erl_mega.algo.prompts import with_action_format
from erl_mega.envs.base import task_seed
from erl_mega.rollout.agent_loop import EpisodeSpec, play_episodes
from erl_mega.rollout.engine import SamplingParams
from erl_mega.rollout.trajectory import Trajectory


@dataclass(frozen=True)
class EvalResult:
    success: float  # fraction of held-out tasks solved (reward >= tau) on the first attempt
    mean_reward: float
    mean_turns: float
    episodes: tuple[Trajectory, ...]


def held_out_seeds(make_env, num_tasks: int, start: int = 0) -> list[int]:
    """The first `num_tasks` held-out seeds from index `start` whose tasks differ in content (deduplicated)."""
    env, seen, seeds, index = make_env(), set(), [], start
    while len(seeds) < num_tasks:
        content = env.reset(task_seed("test", index)).text
        if content not in seen:
            seen.add(content)
            seeds.append(task_seed("test", index))
        index += 1
        if index - start > 100 * num_tasks + 1000:
            raise ValueError(f"only {len(seeds)} distinct held-out tasks; asked for {num_tasks}")
    return seeds


def evaluate(make_env, engine, chat, initial_prompt: str, action_format: str, num_tasks: int, max_new_tokens: int,
             max_context: int, tau: float = 1.0, seed_start: int = 0, attempts=None) -> EvalResult:
    """Greedy first attempts on `num_tasks` distinct held-out tasks (disjoint from training tasks by content).

    `attempts` (an `erl_mega.algo.erl.Attempts`, e.g. a user's agent through the gateway) plays them; None: the native loop.
    """
    system = with_action_format(initial_prompt, action_format)
    specs = [EpisodeSpec(seed, system, i) for i, seed in enumerate(held_out_seeds(make_env, num_tasks, seed_start))]
    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0, stop_token_ids=chat.stop_ids)
    if attempts is not None:
        episodes = attempts.play(specs, params)
    else:
        episodes = play_episodes(make_env, engine, chat, specs, params, max_context)
    n = max(len(episodes), 1)
    return EvalResult(
        success=sum(e.reward >= tau for e in episodes) / n,
        mean_reward=sum(e.reward for e in episodes) / n,
        mean_turns=sum(len(e.turns) for e in episodes) / n,
        episodes=tuple(episodes),
    )
