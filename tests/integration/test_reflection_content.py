"""The embedded base policy helps on attempt 2 only through what the reflection says.

Plays attempt 2 of the same held-out seeds, greedily, under a correct reflection (the RL task's hidden facts),
an empty one (`<prompt></prompt>` falls back to the initial prompt) and a wrong one (the roles swapped).
Uses the default base policy (the quick start's, built once and cached).
"""

import pytest
from rich.console import Console

from erl_mega.algo.prompts import parse_reflection, state_facts, with_action_format
from erl_mega.cli import load_config
from erl_mega.evaluate import held_out_seeds
from erl_mega.model.demos import swapped
from erl_mega.rollout.agent_loop import EpisodeSpec, play_episodes
from erl_mega.rollout.engine import SamplingParams
from erl_mega.run import build

pytestmark = pytest.mark.slow


@pytest.mark.xfail(strict=True, reason="recipe v5 does not teach the tiny model to read stated facts: measured 2026-12-02, "
                   "96 held-out maps, greedy: correct 5.2 %, empty 7.3 %, wrong 5.2 % (v4: 7.3 / 12.5 / 7.3); in 48 "
                   "warm-up-style worlds the three statements also tie (10.4 % each), so the model ignores them")
def test_attempt2_success_is_ordered_correct_empty_wrong():
    cfg = load_config([])
    c = build(cfg, Console(quiet=True))
    initial, facts = cfg.env.initial_prompt, c.make_env().facts
    reflections = {
        "correct": f"<prompt>{initial} {state_facts(facts)}</prompt>",
        "empty": "<prompt></prompt>",
        "wrong": f"<prompt>{initial} {state_facts(swapped(facts))}</prompt>",
    }
    seeds = held_out_seeds(c.make_env, 96)
    params = SamplingParams(cfg.rollout.max_new_tokens, 0.0, stop_token_ids=c.chat.stop_ids)
    success = {}
    for name, reply in reflections.items():
        system = with_action_format(parse_reflection(reply, initial).prompt, c.action_format)
        episodes = play_episodes(c.make_env, c.engine, c.chat, [EpisodeSpec(s, system, i) for i, s in enumerate(seeds)],
                                 params, c.max_context)
        success[name] = sum(e.reward >= 1 for e in episodes) / len(episodes)
    assert success["correct"] > success["empty"] > success["wrong"], success
