"""Does the embedded base policy act on what its prompt states? Attempt 2, greedy, under three statements.

    python benchmarks/bench_fact_reading.py [overrides, e.g. model.cache_dir=DIR env=sokoban]

On the RL task's held-out tasks: the correct statement of its hidden facts, an empty reflection (the initial
prompt) and the swapped statement (`tests/integration/test_reflection_content.py` asserts correct > empty >
wrong). Then on worlds drawn like the warm-up's (facts it may show): correct, none and swapped. And a floor that
needs no reading: a blind script pressing down and right in turn on the RL tasks. Builds the base policy first
if it is not cached.
"""

from __future__ import annotations

import random
import sys

from rich.console import Console

from erl_mega.algo.prompts import state_facts, with_action_format
from erl_mega.cli import load_config
from erl_mega.envs.base import make_env
from erl_mega.evaluate import held_out_seeds
from erl_mega.model.demos import draw_facts, swapped
from erl_mega.rollout.agent_loop import EpisodeSpec, play_episodes
from erl_mega.rollout.engine import SamplingParams
from erl_mega.run import build

RL_TASKS, WORLDS = 96, 48


def success(c, make_env_fn, seeds: list[int], system: str, params: SamplingParams) -> float:
    specs = [EpisodeSpec(seed, system, i) for i, seed in enumerate(seeds)]
    episodes = play_episodes(make_env_fn, c.engine, c.chat, specs, params, c.max_context)
    return sum(e.reward >= 1 for e in episodes) / len(episodes)


def blind_success(make_env_fn, seeds: list[int], moves=("down", "right")) -> float:
    """Success of a script that ignores the map and presses `moves` in turn."""
    wins = 0.0
    for seed in seeds:
        env, turn = make_env_fn(), 0
        env.reset(seed)
        while not (result := env.step(f"<action>{moves[turn % len(moves)]}</action>")).done:
            turn += 1
        wins += result.reward >= 1
    return wins / len(seeds)


def main(overrides: list[str]) -> None:
    cfg = load_config(overrides)
    c = build(cfg, Console())
    env, facts = cfg.env, c.make_env().facts
    params = SamplingParams(cfg.rollout.max_new_tokens, 0.0, stop_token_ids=c.chat.stop_ids)
    prompt = lambda stated: with_action_format(f"{env.initial_prompt} {state_facts(stated)}".strip(), c.action_format)  # noqa: E731
    seeds = held_out_seeds(c.make_env, RL_TASKS)
    rl = {name: success(c, c.make_env, seeds, prompt(stated), params)
          for name, stated in {"correct": facts, "empty": {}, "wrong": swapped(facts)}.items()}
    print(f"RL task, {RL_TASKS} held-out tasks: " + ", ".join(f"{k} {v:.1%}" for k, v in rl.items()))
    print(f"a blind script on the same tasks (down and right in turn): {blind_success(c.make_env, seeds):.1%}")
    rng, worlds = random.Random(5), {"correct": 0.0, "none": 0.0, "wrong": 0.0}
    for k in range(WORLDS):
        drawn = draw_facts(facts, rng)
        world = lambda: make_env(env.name, max_turns=env.max_turns, **(env.options | drawn))  # noqa: E731
        for name, stated in {"correct": drawn, "none": {}, "wrong": swapped(drawn)}.items():
            worlds[name] += success(c, world, [600_000 + k], prompt(stated), params) / WORLDS
    print(f"warm-up-style worlds, {WORLDS} tasks: " + ", ".join(f"{k} {v:.1%}" for k, v in worlds.items()))


if __name__ == "__main__":
    main(sys.argv[1:])
