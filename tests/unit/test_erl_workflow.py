"""The ERL workflow's logic with a scripted engine: gating, reflection parsing, memory, rows."""

import pytest
import torch

from erl_mega.algo.erl import Episodes, ErlConfig, ErlWorkflow, TaskEpisodes
from erl_mega.algo.memory import ReflectionMemory
from erl_mega.algo.prompts import MEMORY_HEADER, parse_reflection, with_action_format
from erl_mega.algo.rows import distill_rows, policy_rows
from erl_mega.envs.frozenlake import FrozenLake
from erl_mega.model.demos import expert_move
from erl_mega.rollout.agent_loop import EpisodeSpec, play_episodes
from erl_mega.rollout.engine import SamplingParams
from erl_mega.rollout.trajectory import Segment
from erl_mega.train.batch import collate

INITIAL = "Reach the target."
GOOD = "<prompt>WALK CAREFULLY</prompt>"


def expert_script(prompt_text: str) -> str:
    """Plays the expert's move on the map in the prompt's last observation."""
    rows = prompt_text.split("<|im_start|>user\n")[-1].split("<|im_end|>")[0].splitlines()
    grid = [r for r in rows if r and set(r) <= set(".x*@")]
    env = FrozenLake()
    env.desc = ["".join({"x": "H", "*": "G"}.get(ch, "F") for ch in row) for row in grid]
    r, c = next((i, row.index("@")) for i, row in enumerate(grid) if "@" in row)
    env._env = type("S", (), {"unwrapped": type("U", (), {"s": r * len(grid) + c})()})()
    return f"<action>{expert_move(env)}</action>"


def script(reflection_answer: str):
    """Attempt 1 walks into the wall forever (fails); under the reflection's prompt the expert plays."""

    def run(prompt_text: str) -> str:
        if "Write better instructions" in prompt_text:
            return reflection_answer
        if "WALK CAREFULLY" in prompt_text:
            return expert_script(prompt_text)
        return "<action>left</action>"

    return run


def workflow(chat, engine, **cfg):
    return ErlWorkflow(
        ErlConfig(n_rollouts=2, **cfg), lambda: FrozenLake(max_turns=8), engine, chat, INITIAL,
        FrozenLake.action_format, SamplingParams(8, stop_token_ids=chat.stop_ids),
        SamplingParams(32, stop_token_ids=chat.stop_ids), 4096, ReflectionMemory(),
    )


def test_parse_reflection_and_fallback():
    assert parse_reflection("x <prompt> new plan </prompt> y", "old") == parse_reflection("<prompt>new plan</prompt>", "z")
    assert parse_reflection("no tag here", "old").prompt == "old"
    assert parse_reflection("no tag here", "old").tag_missing
    assert parse_reflection("<prompt>  </prompt><prompt>second</prompt>", "old").prompt == "second"


def test_failed_tasks_reflect_retry_and_update_memory(chat, scripted):
    engine = scripted(script(GOOD))
    wf = workflow(chat, engine)
    episodes = wf.collect([1, 2], sample_seed=0)
    for task in episodes.tasks:
        assert len(task.attempt1) == 2 and all(t.reward == 0 for t in task.attempt1)
        assert len(task.reflections) == 2 and len(task.attempt2) == 2
        assert all(t.reward == 1 for t in task.attempt2)
        assert [r.reward for r in task.reflections] == [t.reward for t in task.attempt2]  # reflection's reward is r2
        # attempt 2 replays the same seed from scratch and never sees attempt 1's raw trace
        first_obs = chat.decode(task.attempt1[0].segments[1].token_ids)
        assert chat.decode(task.attempt2[0].segments[1].token_ids) == first_obs
        assert "moved left" not in chat.decode(task.attempt2[0].token_ids())
        system2 = chat.decode(task.attempt2[0].segments[0].token_ids)
        assert "WALK CAREFULLY" in system2 and FrozenLake.action_format in system2
    assert wf.memory.entries == ["WALK CAREFULLY"]
    assert episodes.metrics["attempt2_success"] == 1 and episodes.metrics["tag_missing_rate"] == 0
    assert episodes.metrics["memory_updates"] == 4


def test_missing_tag_falls_back_and_is_counted(chat, scripted):
    wf = workflow(chat, scripted(script("just try harder")))
    episodes = wf.collect([1], sample_seed=0)
    assert episodes.metrics["tag_missing_rate"] == 1.0
    assert all(INITIAL in chat.decode(t.segments[0].token_ids) for t in episodes.tasks[0].attempt2)
    assert wf.memory.entries == []


def test_all_succeed_trains_attempt1_only(chat, scripted):
    wf = workflow(chat, scripted(expert_script))
    episodes = wf.collect([3, 4], sample_seed=0)
    assert all(not t.reflections and not t.attempt2 for t in episodes.tasks)
    assert "attempt2_success" not in episodes.metrics


def test_grpo_never_reflects(chat, scripted):
    engine = scripted(script(GOOD))
    episodes = workflow(chat, engine, name="grpo").collect([1], sample_seed=0)
    assert not episodes.tasks[0].reflections and not episodes.tasks[0].attempt2
    assert not any("Write better" in chat.decode(r.prompt_ids) for r in engine.requests)


def test_no_memory_reflects_from_initial_prompt(chat, scripted):
    engine = scripted(script(GOOD))
    wf = workflow(chat, engine, no_memory=True)
    wf.memory.add("REMEMBERED")
    wf.collect([1], sample_seed=0)
    asks = [chat.decode(r.prompt_ids) for r in engine.requests if "Write better" in chat.decode(r.prompt_ids)]
    assert asks and all(f"{MEMORY_HEADER}\n{INITIAL}\n" in a for a in asks)
    assert wf.memory.entries == ["REMEMBERED"]


def test_memory_feeds_the_next_reflection(chat, scripted):
    engine = scripted(script(GOOD))
    wf = workflow(chat, engine)
    wf.memory.add("REMEMBERED")
    wf.collect([1], sample_seed=0)
    asks = [chat.decode(r.prompt_ids) for r in engine.requests if "Write better" in chat.decode(r.prompt_ids)]
    assert all(f"{MEMORY_HEADER}\nREMEMBERED\n" in a for a in asks)


def test_rows_advantages_per_role_and_distillation(chat, scripted):
    wf = workflow(chat, scripted(script(GOOD)))
    episodes = wf.collect([1, 2], sample_seed=0)
    rows = policy_rows(episodes)
    assert sorted({r.role for r in rows}) == ["attempt1", "attempt2", "reflection"]
    assert all(r.advantage == 0 for r in rows)  # every group is all-fail or all-success here
    initial = Segment(chat.system(with_action_format(INITIAL, FrozenLake.action_format)))
    drows = distill_rows(episodes, initial)  # RAFT: ordinary PPO rows, advantage max(r2, 0)
    assert len(drows) == 4 and all(r.kind == "policy" and r.role == "distill" and r.advantage == 1.0 for r in drows)
    separate = distill_rows(episodes, initial, "separate")
    assert all(r.weight == 1.0 and r.kind == "distill" for r in separate)
    source = episodes.tasks[0].attempt2[0]
    d = drows[0].trajectory
    assert d.segments[0] == initial and d.segments[1:] == source.segments[1:]  # system swapped, rest identical
    mask = torch.tensor(d.loss_mask(), dtype=torch.bool)
    ids = torch.tensor(d.token_ids())
    sampled = [t for s in source.segments if s.sampled for t in s.token_ids]
    assert ids[mask].tolist() == sampled  # loss only on the assistant's tokens
    assert mask[: len(initial.token_ids)].sum() == 0


def test_mixed_rewards_give_signed_advantages(chat, scripted):
    wf = workflow(chat, scripted(script(GOOD)))
    episodes = wf.collect([1], sample_seed=0)
    task = episodes.tasks[0]
    mixed = Episodes((TaskEpisodes(task.env_seed, (task.attempt1[0], task.attempt2[0])),))
    adv = [r.advantage for r in policy_rows(mixed)]
    assert adv[0] < 0 < adv[1] and adv[0] == pytest.approx(-adv[1])


def test_trainer_sees_exactly_the_sampled_ids(chat, scripted):
    engine = scripted(expert_script)
    spec = EpisodeSpec(3, with_action_format(INITIAL, FrozenLake.action_format), 0)
    (traj,) = play_episodes(lambda: FrozenLake(), engine, chat, [spec], SamplingParams(8, stop_token_ids=chat.stop_ids), 4096)
    assert len(traj.turns) > 1  # multi-turn
    # each request's prompt is exactly the trajectory's ids up to that reply
    ids = traj.token_ids()
    sampled_starts = []
    pos = 0
    for seg in traj.segments:
        if seg.sampled:
            sampled_starts.append(pos)
        pos += len(seg.token_ids)
    assert [list(r.prompt_ids) for r in engine.requests] == [ids[:s] for s in sampled_starts]
    batch = collate(policy_rows(Episodes((TaskEpisodes(3, (traj,)),))), 0)
    mask = batch.loss_mask[0].bool()
    assert batch.targets[0][mask].tolist() == [t for s in traj.segments if s.sampled for t in s.token_ids]
    assert torch.allclose(batch.rollout_logprobs[0][mask], torch.tensor(-0.5))
    # and the ids equal the chat template's rendering of the conversation
    assert chat.tokenizer.decode(ids).startswith("<|im_start|>system\n")
