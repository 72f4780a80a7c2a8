"""Issue 11's fidelity defects against the reference, one test each, and the linear-time parsers (issue 17)."""

import time

import pytest
from hypothesis import given, settings, strategies as st

from erl_mega.algo.erl import ErlConfig, ErlWorkflow
from erl_mega.algo.memory import ReflectionMemory
from erl_mega.algo.prompts import MEMORY_HEADER, parse_reflection, reflection_request
from erl_mega.algo.rows import distill_rows, policy_rows
from erl_mega.cli import load_config
from erl_mega.envs.base import content_split, make_env, task_seed
from erl_mega.envs.frozenlake import FrozenLake, parse_action, shortest_path
from erl_mega.envs.hotpotqa import content_key, parse_search
from erl_mega.envs.qa_corpus import synthetic_dataset
from erl_mega.evaluate import held_out_seeds
from erl_mega.rollout.engine import SamplingParams
from erl_mega.rollout.trajectory import Segment, Trajectory, Turn
from erl_mega.train.batch import collate

INITIAL = "Reach the target."


def attempt(reward: float, replies: list[str], task: str = "@.\n.*", mark: str = "") -> Trajectory:
    turns = tuple(Turn(r, f"note {i}", 0.0, f"obs {i} {mark}") for i, r in enumerate(replies))
    turns = turns[:-1] + (Turn(replies[-1], "Failure: step limit.", reward, "Failure: step limit."),)
    return Trajectory((Segment((1,)),), turns, reward, 0, {"task": task})


def chars(text: str) -> int:
    return len(text)


def test_request_shows_task_steps_feedback_metrics_under_the_reference_header():
    env = FrozenLake()
    obs = env.reset(0).text
    played = [env.step("<action>up</action>")]  # off the map at the start: a 'did not move' note
    tr = Trajectory((Segment((1,)),), (Turn("<action>up</action>", played[0].feedback, 0.0, played[0].observation.text),),
                    0.0, 0, {"task": obs})
    text = reflection_request(INITIAL, [tr], 0.25, parse_action, chars, 10_000)
    assert text.startswith("Inferred information from past attempts (may be inaccurate):")
    assert obs in text and "step 1: action up; reward 0" in text and "You did not move" in text
    assert "success rate 25%" in text and f"Feedback: {played[0].feedback}" in text


def test_request_keeps_the_8_newest_and_fits_any_budget():
    attempts = [attempt(0.0, ["<action>left</action>"] * 3, mark=f"try{i}") for i in range(10)]
    full = reflection_request(INITIAL, attempts, 0.0, parse_action, chars, 100_000)
    assert full.count("\nAttempt ") == 8 and "try2" in full and "try1" not in full
    for budget in (50, 200, 400, 700, 1500):
        text = reflection_request(INITIAL, attempts, 0.0, parse_action, chars, budget)
        assert text is None or len(text) <= budget
    shorter = reflection_request(INITIAL, attempts, 0.0, parse_action, chars, len(full) - 1)
    assert "try9" in shorter and "try2" not in shorter  # the oldest go first


def test_trace_shows_the_move_the_environment_plays():
    tr = attempt(0.0, ["<action>left</action><action>RIGHT</action>"])
    assert "action right" in reflection_request(INITIAL, [tr], 0.0, parse_action, chars, 10_000)
    env = FrozenLake()
    env.reset(0)
    before = env.position
    env.step("<action>left</action><action>RIGHT</action>")
    assert env.position != before or env.position[1] == env.size - 1


def test_blocked_move_says_the_agent_did_not_move():
    env = FrozenLake()
    env.reset(3)
    result = env.step("<action>up</action>")
    assert "did not move" in result.feedback and "moved up" not in result.feedback


def test_frozenlake_maps_as_the_reference():
    env = FrozenLake()
    sizes = set()
    for seed in range(150):
        env.reset(seed)
        sizes.add(env.size)
        assert len(shortest_path(env.desc, (0, 0))) <= env.max_turns  # solvable within the step limit
    assert sizes <= set(range(2, 10)) and len(sizes) >= 3  # 2-9 drawn; 8 steps keep sides <= 5 solvable
    with pytest.raises(ValueError, match="min_size"):
        FrozenLake(min_size=1)


@pytest.mark.parametrize("name, options, train_n, test_n", [("frozenlake", {}, 400, 64), ("sokoban", {}, 120, 24)])
def test_held_out_is_disjoint_by_content_and_deduplicated(name, options, train_n, test_n):
    make = lambda: make_env(name, **options)  # noqa: E731
    env = make()
    train = {env.reset(task_seed("train", i)).text for i in range(train_n)}
    seeds = held_out_seeds(make, test_n)
    test = [env.reset(s).text for s in seeds]
    assert len(set(test)) == test_n and not train & set(test)
    assert all(s >= task_seed("test", 0) for s in seeds)


def test_content_split_is_one_in_eight():
    share = sum(content_split(f"map {i}") == "test" for i in range(4000)) / 4000
    assert 0.09 < share < 0.16


def test_sokoban_defaults_as_the_reference():
    cfg = load_config(["env=sokoban"])
    assert cfg.env.max_turns == 8
    env = make_env("sokoban", max_turns=cfg.env.max_turns, **cfg.env.options)
    widths = set()
    for seed in range(30):
        rows = env.reset(seed).text.splitlines()
        widths.add(len(rows))
        assert 1 <= len(env.solution) <= 8 and len(env.boxes) == 1
    assert widths <= {6, 7, 8} and len(widths) > 1


def test_grpo_draws_10_per_task_and_reflection_samples_at_its_own_temperature():
    cfg = load_config(["algo=grpo"])
    assert cfg.algo.n_rollouts == 10 and cfg.rollout.reflect_temperature == 0.5 and cfg.rollout.reflect_top_p == 0.9


def _wf(chat, engine, **cfg):
    return ErlWorkflow(ErlConfig(n_rollouts=2, **cfg), lambda: FrozenLake(), engine, chat, INITIAL, FrozenLake.action_format,
                       SamplingParams(8, 1.0, stop_token_ids=chat.stop_ids), SamplingParams(32, 0.5, 0.9, chat.stop_ids),
                       4096, ReflectionMemory())


def _script(prompt: str) -> str:
    if "Write better instructions" in prompt:
        return "<prompt>GO</prompt>"
    return "<action>right</action>" if "GO" in prompt else "<action>left</action>"


def test_rows_carry_their_sampling_temperature_and_raft_distillation(chat, scripted):
    episodes = _wf(chat, scripted(_script)).collect([1, 2, 5], sample_seed=0)
    task = next(t for t in episodes.tasks if t.reflections)
    assert {r.temperature for r in task.reflections} == {0.5} and {a.temperature for a in task.attempt1} == {1.0}
    rows = policy_rows(episodes) + distill_rows(episodes, Segment(chat.system(INITIAL)))
    batch = collate(rows, chat.tokenizer.pad_token_id)
    assert sorted(set(batch.temperatures.tolist())) == [0.5, 1.0]
    distilled = [r for r in rows if r.role == "distill"]
    if distilled:  # the same PPO loss: policy rows, advantage max(r2, 0), nothing in the separate term
        assert all(r.kind == "policy" and r.advantage == max(r.trajectory.reward, 0) for r in distilled)
        assert not batch.is_distill.any()


def test_no_reflection_is_the_papers_ablation(chat, scripted):
    engine = scripted(_script)
    episodes = _wf(chat, engine, no_reflection=True).collect([1], sample_seed=0)
    assert not any("Write better" in chat.decode(r.prompt_ids) for r in engine.requests)
    (task,) = episodes.tasks
    system2 = chat.decode(task.attempt2[0].segments[0].token_ids)
    assert not task.reflections and MEMORY_HEADER in system2 and "Attempt 1" in system2 and "action left" in system2


def test_over_long_reflection_is_skipped_and_counted(chat, scripted):
    episodes = _wf(chat, scripted(_script), reflection_tokens=20).collect([1, 2], sample_seed=0)
    assert episodes.metrics["reflection_skipped"] == 2
    assert all(len(t.attempt1) == 2 and not t.attempt2 for t in episodes.tasks)


def test_memory_updates_are_zero_under_no_memory(chat, scripted):
    wf = _wf(chat, scripted(lambda p: "<prompt>GO</prompt>" if "Write better" in p else _expert_or_left(p)), no_memory=True)
    episodes = wf.collect([1, 2], sample_seed=0)
    assert episodes.metrics["memory_updates"] == 0 and wf.memory.entries == []


def _expert_or_left(prompt: str) -> str:
    from tests.unit.test_erl_workflow import expert_script

    return expert_script(prompt) if "GO" in prompt else "<action>left</action>"


UNCLOSED = st.lists(st.sampled_from(["<prompt>", "<search>", "</prompt", "<SEARCH>", "x", "</search>", "\\boxed{"]),
                    max_size=2000).map("".join)


@settings(max_examples=30, deadline=None)
@given(text=UNCLOSED)
def test_parsers_match_the_regex_and_stay_fast(text):
    import re

    clock = time.perf_counter()
    found = parse_search(text)
    parsed = parse_reflection(text, "old")
    assert time.perf_counter() - clock < 0.05
    blocks = re.findall(r"<search>(.*?)</search>", text, re.IGNORECASE | re.DOTALL)
    assert found == ((blocks[-1].strip() if blocks else "") or None)
    first = next((b.strip() for b in re.findall(r"<prompt>(.*?)</prompt>", text, re.DOTALL) if b.strip()), None)
    assert parsed.prompt == (first or "old")


@pytest.mark.parametrize("tag", ["<prompt>", "<search>"])
def test_234_kib_of_unclosed_tags_parse_in_linear_time(tag):
    text = tag * (234 * 1024 // len(tag))
    clock = time.perf_counter()
    parse_reflection(text, "old")
    parse_search(text)
    assert time.perf_counter() - clock < 0.5  # was 49 s and 42 s
