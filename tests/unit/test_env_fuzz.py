"""Every registered environment takes arbitrary agent text without raising: bad actions are feedback."""

from functools import lru_cache

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from erl_mega.envs.base import TEST_SEED_OFFSET, Env, StepResult, env_names, make_env

PIECES = [  # fragments of every environment's tags, so the fuzz reaches the parsers' corners
    "<action>", "</action>", "up", "down", "left", "right", "UP", "<search>", "</search>", "\\boxed{", "{", "}",
    "\\text{", "<answer>", "</answer>", "<prompt>", " ", "\n", "\x00",
]
REPLIES = st.one_of(
    st.text(max_size=300),
    st.lists(st.one_of(st.sampled_from(PIECES), st.text(max_size=12)), max_size=16).map("".join),
)


@lru_cache(maxsize=None)
def env(name: str) -> Env:
    return make_env(name)


@pytest.mark.parametrize("name", env_names())
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2 * TEST_SEED_OFFSET), replies=st.lists(REPLIES, min_size=1, max_size=10))
def test_any_text_is_a_step_with_feedback(name, seed, replies):
    game = env(name)
    assert isinstance(game.reset(seed).text, str)
    for reply in replies:
        result = game.step(reply)
        assert isinstance(result, StepResult) and isinstance(result.observation.text, str)
        assert isinstance(result.feedback, str) and result.feedback.strip()
        assert 0.0 <= result.reward <= 1.0
        if result.done:
            break
