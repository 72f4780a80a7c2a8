"""Sokoban: the C++ generator and solver against the plain-Python reference, and the text environment."""

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from erl_mega import native
from erl_mega.algo.erl import ErlConfig, ErlWorkflow
from erl_mega.algo.memory import ReflectionMemory
from erl_mega.envs import sokoban_ref
from erl_mega.envs.base import make_env, task_seed
from erl_mega.envs.sokoban import PLAN_ACTIONS, SYMBOLS, Sokoban, parse_xsb
from erl_mega.rollout.engine import SamplingParams

SMALL = [(6, 1, 20), (7, 2, 20), (8, 2, 30)]  # (room size, boxes, max moves): small enough for the plain BFS
SEEDS = st.integers(0, 2**64 - 1)


def act(move: str) -> str:
    return f"I will go <action>{move}</action>"


def load(env: Sokoban, rows: list[str]) -> None:
    """Put a hand-written level into a fresh episode."""
    env.level = parse_xsb(rows)
    env.boxes, env.player, env.turns, env.done = set(env.level.boxes), env.level.player, 0, False


@settings(max_examples=40, deadline=None)
@given(seed=SEEDS, config=st.sampled_from(SMALL))
def test_generated_levels_are_solved_and_no_shorter_plan_exists(seed, config):
    size, boxes, max_moves = config
    rows, plan = native.sokoban_generate(seed, size, boxes, max_moves)
    assert len(rows) == size and all(len(row) == size for row in rows)
    assert 1 <= len(plan) <= max_moves
    assert native.sokoban_solve(rows, max_moves) == plan
    assert sokoban_ref.solve(rows, len(plan) - 1) is None  # the plain BFS finds nothing shorter
    assert sokoban_ref.solve(rows, len(plan)) == plan  # same move order, same first plan found


@pytest.mark.parametrize("config", SMALL)
def test_generator_mirrors_the_python_reference(config):
    for seed in (0, 1, 2, 99, 2**63 + 5):
        assert native.sokoban_generate(seed, *config) == sokoban_ref.generate(seed, *config)


def test_golden_level():
    rows, plan = native.sokoban_generate(0, 6, 1, 20)
    assert rows == ["######", "###  #", "### .#", "####$#", "#@   #", "######"] and plan == "RRRU"


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2_000_000), room_size=st.sampled_from([5, 6, 8]), num_boxes=st.sampled_from([1, 2]))
def test_solver_plan_replayed_through_env_reaches_reward_1(seed, room_size, num_boxes):
    env = make_env("sokoban", max_turns=25, min_room_size=room_size, max_room_size=room_size, num_boxes=num_boxes,
                   max_moves=20)
    env.reset(seed)
    results = [env.step(act(PLAN_ACTIONS[letter])) for letter in env.solution]
    assert all(not r.done for r in results[:-1])
    assert results[-1].done and results[-1].reward == 1.0 and results[-1].feedback.startswith("Success")


def test_reset_is_deterministic_remapped_and_split_by_seed():
    a, b = Sokoban(), Sokoban()
    assert a.reset(task_seed("train", 3)).text == b.reset(task_seed("train", 3)).text
    text = a.reset(task_seed("train", 3)).text
    assert not set("#$+") & set(text) and "%" in text and set(text) <= set(SYMBOLS.values()) | {"\n"}
    train = {Sokoban().reset(task_seed("train", i)).text for i in range(20)}
    test = {Sokoban().reset(task_seed("test", i)).text for i in range(20)}
    assert len(train) > 10 and len(test) > 10


def test_invalid_blocked_and_pushed_moves_are_reported():
    env = Sokoban(max_turns=10)
    load(env, ["######", "#    #", "# $.@#", "######"])
    bad = env.step("go up please")
    assert not bad.done and "Invalid move" in bad.observation.text and env.turns == 1
    wall = env.step(act("right"))
    assert wall.feedback == "No effect: a wall blocks right." and "%.o*@%" in wall.observation.text
    moved = env.step(act("up"))
    assert moved.feedback == "You moved up." and env.turns == 3


def test_box_against_wall_cannot_be_pushed_and_solving_ends_with_success():
    env = Sokoban(max_turns=10)
    load(env, ["#####", "# @$#", "#  .#", "#####"])
    blocked = env.step(act("right"))
    assert blocked.feedback == "No effect: the box cannot be pushed right." and not blocked.done
    load(env, ["#####", "#@$.#", "#####"])
    done = env.step(act("right"))
    assert done.done and done.reward == 1.0 and done.feedback == "Success: every box (o) is on a target (*) after 1 steps."


def test_box_pushed_into_a_corner_ends_stuck():
    env = Sokoban(max_turns=10)
    load(env, ["######", "#    #", "# $.@#", "######"])
    env.step(act("left"))
    stuck = env.step(act("left"))
    assert stuck.done and stuck.reward == 0.0
    assert stuck.feedback.startswith("Failure: stuck; the box (o) pushed to row 2, column 1 is in a corner")


def test_step_limit_feedback_and_step_after_end():
    env = Sokoban(max_turns=2)
    env.reset(0)
    env.step("nothing")
    end = env.step("still nothing")
    assert end.done and end.reward == 0 and end.feedback == "Failure: step limit of 2 reached with 0 of 1 boxes (o) on targets (*)."
    with pytest.raises(RuntimeError, match="reset"):
        env.step(act("up"))


def test_options_and_native_inputs_are_validated():
    with pytest.raises(ValueError, match="room_size"):
        make_env("sokoban", min_room_size=4)
    with pytest.raises(ValueError, match="num_boxes"):
        make_env("sokoban", num_boxes=5)
    with pytest.raises(ValueError, match="bad options"):
        make_env("sokoban", boxes=2)
    with pytest.raises(ValueError, match="seed"):
        Sokoban().reset(-1)
    with pytest.raises(ValueError, match="unknown level character"):
        native.sokoban_solve(["#@x#"], 5)
    with pytest.raises(ValueError, match="one player"):
        native.sokoban_solve(["#$.#"], 5)
    with pytest.raises(ValueError, match="size"):
        native.sokoban_generate(0, 4, 1, 10)
    assert native.sokoban_solve(["#@$.#"], 0) is None and native.sokoban_solve(["#@*#"], 0) == ""


def test_config_builds_the_env():
    with open("configs/env/sokoban.yaml") as f:
        cfg = yaml.safe_load(f)
    env = make_env(cfg["name"], max_turns=cfg["max_turns"], **cfg["options"])
    assert isinstance(env, Sokoban) and env.max_turns == cfg["max_turns"]


def solver_script(prompt_text: str) -> str:
    """Under reflected instructions, play the optimal move for the grid in the last observation; else dither."""
    if "Write better instructions" in prompt_text:
        return "<prompt>PLAN PUSHES</prompt>"
    if "PLAN PUSHES" not in prompt_text:
        return "I am not sure."
    last = prompt_text.split("<|im_start|>user\n")[-1].split("<|im_end|>")[0]
    shown = {v: k for k, v in SYMBOLS.items()}
    rows = ["".join(shown[ch] for ch in line) for line in last.splitlines() if line and set(line) <= set(shown)]
    return act(PLAN_ACTIONS[native.sokoban_solve(rows, 30)[0]])


def test_runs_in_the_erl_loop(chat, scripted):
    wf = ErlWorkflow(
        ErlConfig(n_rollouts=2), lambda: Sokoban(max_turns=20), scripted(solver_script), chat,
        "Place every movable object on a target.", Sokoban.action_format,
        SamplingParams(16, stop_token_ids=chat.stop_ids), SamplingParams(32, stop_token_ids=chat.stop_ids),
        8192, ReflectionMemory(),
    )
    episodes = wf.collect([task_seed("train", 0), task_seed("train", 1)], sample_seed=0)
    assert episodes.metrics["attempt1_success"] == 0 and episodes.metrics["attempt2_success"] == 1
