"""FrozenLake text environment: determinism, remapped symbols, feedback kinds, never raising on text."""

import pytest

from erl_mega.envs.base import TEST_SEED_OFFSET, make_env, task_seed
from erl_mega.envs.frozenlake import FrozenLake, parse_action


def test_reset_is_deterministic_and_hides_letters():
    a, b = FrozenLake(), FrozenLake()
    assert a.reset(11).text == b.reset(11).text
    text = a.reset(11).text
    assert "@" in text and "*" in text and not set("SFHG") & set(text)


def test_expert_path_reaches_goal_with_success_feedback():
    env = FrozenLake(max_turns=20)
    env.reset(5)
    while True:
        result = env.step(f"I go <action>{env.expert_move(env.facts)}</action>")
        if result.done:
            break
    assert result.reward == 1.0 and result.feedback.startswith("Success")


def test_step_limit_feedback():
    env = FrozenLake(max_turns=2)
    env.reset(0)
    env.step("<action>left</action>")  # into the wall at the start: no move, a turn used
    end = env.step("<action>up</action>")
    assert end.done and end.reward == 0 and "step limit of 2" in end.feedback


def test_hole_feedback_names_the_cell():
    env = FrozenLake()
    seed = next(s for s in range(300) if _desc(s)[0][1] == "H")
    env.reset(seed)
    result = env.step("<action>right</action>")
    assert result.done and result.reward == 0 and "hole (x) at row 0, column 1" in result.feedback


def _desc(seed):
    env = FrozenLake()
    env.reset(seed)
    return env.desc


@pytest.mark.parametrize("text", ["", "up", "<action>jump</action>", "<action>", "\x00\n" * 50, "<action>UP</action>"])
def test_unparseable_text_is_feedback_not_exception(text):
    env = FrozenLake()
    env.reset(0)
    result = env.step(text)
    if parse_action(text) is None:
        assert "Invalid move" in result.observation.text and not result.done
    assert env.turns == 1


def test_seed_splits_are_disjoint_and_options_validated():
    assert task_seed("train", 5) == 5 and task_seed("test", 5) == TEST_SEED_OFFSET + 5
    with pytest.raises(ValueError, match="split"):
        task_seed("dev", 0)
    with pytest.raises(ValueError, match="bad options"):
        make_env("frozenlake", max_turns=4, sise=3)
    with pytest.raises(ValueError, match="size"):
        make_env("frozenlake", size=40)

