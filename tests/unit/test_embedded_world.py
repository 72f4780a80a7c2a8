"""The embedded world's demonstrations: facts drawn per world, never the RL tasks' own; reflections write what
the feedback revealed; the environments hide their facts from the first observation and name them in feedback."""

import random

import pytest

from erl_mega.algo.prompts import facts_in, state_facts
from erl_mega.config.schema import WarmupConfig
from erl_mega.envs.base import make_env
from erl_mega.model.demos import demonstrations, draw_facts, swapped

WARMUP = WarmupConfig(episodes=40, epochs=1, lr=1e-3, batch_size=8, noise=0.3, reflected_noise=0.05, missing_tag_rate=0.0)


@pytest.mark.parametrize("name", ["frozenlake", "sokoban"])
def test_demonstrations_never_state_the_rl_tasks_facts_and_reflections_write_revealed_ones(name, chat):
    make_world = lambda facts: make_env(name, max_turns=8, **facts)  # noqa: E731
    hidden = make_world({}).facts
    rows = demonstrations(make_world, chat, "Reach the target.", WARMUP, seed=3)
    texts = [chat.tokenizer.decode(r.trajectory.token_ids()) for r in rows]
    for role, symbol in hidden.items():
        assert not any(f"The {role} is {symbol}." in t or f"{role} ({symbol})" in t for t in texts), role
    reflections = [r.trajectory for r in rows if r.role == "reflection"]
    assert reflections
    for tr in reflections:
        request = chat.tokenizer.decode(list(tr.segments[1].token_ids))
        written = tr.turns[0].reply.removeprefix("<prompt>").removesuffix("</prompt>")
        stated = dict(role_symbol for role_symbol in facts_of_sentences(written))
        assert stated and set(facts_in(request).items()) <= set(stated.items())  # every revealed fact is written


def facts_of_sentences(text):
    for sentence in text.split(". "):
        words = sentence.rstrip(".").split()
        if len(words) == 4 and words[:1] == ["The"] and words[2] == "is":
            yield words[1], words[3]


def test_world_facts_avoid_the_tasks_symbol_per_role_and_swapping_exchanges_roles():
    rng = random.Random(0)
    for _ in range(200):
        facts = draw_facts({"hole": "x", "goal": "*"}, rng)
        assert facts["hole"] != "x" and facts["goal"] != "*" and facts["hole"] != facts["goal"]
        assert swapped(facts)["hole"] != "x" and swapped(facts)["goal"] != "*"
    assert swapped({"hole": "a", "goal": "b"}) == {"hole": "b", "goal": "a"}
    assert state_facts({"box": "o", "target": "*"}) == "The box is o. The target is *."


def test_feedback_names_the_symbols_and_the_expert_acts_on_its_belief():
    env = make_env("frozenlake", hole="o", goal="#")
    obs = env.reset(7)
    assert "o" in obs.text and "#" in obs.text and "hole" not in obs.text
    right, wrong = env.expert_move(env.facts), env.expert_move(swapped(env.facts))
    assert right != wrong  # this map: the goal is down the column, a hole right beside the start
    while True:
        result = env.step(f"<action>{env.expert_move(env.facts)}</action>")
        if result.done:
            break
    assert result.reward == 1 and facts_in(result.feedback) == {"goal": "#"}
    with pytest.raises(ValueError, match="env.options.goal"):
        make_env("frozenlake", goal="@")
    with pytest.raises(ValueError, match="its own symbol"):
        make_env("sokoban", box="x", target="x")


@pytest.mark.parametrize("name", ["frozenlake", "sokoban"])
def test_every_grid_cell_is_one_token_so_neighbours_sit_at_fixed_offsets(name):
    """The embedded tokenizer keeps a rendered map's cells apart, for the RL task's symbols and every world's."""
    from erl_mega.model.tokenizer import train_tokenizer

    make_world = lambda facts: make_env(name, max_turns=8, **facts)  # noqa: E731
    rng = random.Random(1)
    worlds = [{}] + [draw_facts(make_world({}).facts, rng) for _ in range(12)]
    maps = [make_world(facts).reset(seed).text for facts in worlds for seed in range(40)]
    words = ["You moved down. The box is o. Failure: fell into a hole (x) after 3 steps. <action>left</action>"] * 50
    tokenizer = train_tokenizer(maps * 20 + words, vocab_size=400, grid_cells=True)  # BPE would merge "...." and "xx" if it could
    for text in maps:
        for line in text.splitlines():
            assert [tokenizer.decode([i]) for i in tokenizer.encode(line)] == list(line), line
    assert len(tokenizer.encode("<action>left</action>")) == 7  # words still merge: <, action, >, left, </, action, >
