"""One ERL step with the LangGraph agent through `erl-mega train`: gateway episodes, Megatron trainer, weight sync."""

import json

import pytest

from erl_mega.cli import load_config
from erl_mega.run import train

pytestmark = pytest.mark.slow


def test_erl_step_with_langgraph_agent_sees_the_new_weights(tool_checkpoint, tmp_path):
    from recording_agent import SEEN

    out = tmp_path / "run"
    overrides = {"agent": "langgraph_qa", "agent.entry": "recording_agent:recording_qa", "model.path": tool_checkpoint,
                 "env.max_turns": 2, "steps": 1, "tasks_per_step": 1, "algo.n_rollouts": 2, "eval_tasks": 1,
                 "rollout.max_new_tokens": 40, "rollout.reflect_max_new_tokens": 16, "checkpoint_every": 0,
                 "plot": "false", "out_dir": out}
    SEEN.clear()
    results = train(load_config([f"{k}={v}" for k, v in overrides.items()]))
    row = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert row["attempt1_success"] == 0.0 and "attempt2_success" in row  # the agent played attempts 1 and 2
    assert row["rows"] >= 4 and row["logprob_gap_mean"] < 1e-4  # the trainer scores exactly the sampled tokens
    assert row["prefix_mismatches"] == 0
    versions = [s["fingerprint"] for s in SEEN]
    # base eval and both attempts under weights 0; after the step's sync the agent's next call says version 1
    assert versions[-2:] == ["weights-v1"] * 2 and set(versions[:-2]) == {"weights-v0"} and SEEN[-1]["header"] == "1"
    assert len(versions) >= 2 + 2 + 2 + 2  # greedy evals: two tool turns; sampled attempts 1 and 2: one call or more each
    assert results["trained"]["success"] == 0.0


def test_eval_with_an_agent_stops_its_gateway(tool_checkpoint, tmp_path):
    import threading
    import time

    from erl_mega.run import evaluate_policy

    before = set(threading.enumerate())
    overrides = {"agent": "langgraph_qa", "agent.entry": "recording_agent:recording_qa", "model.path": tool_checkpoint,
                 "env.max_turns": 2, "eval_tasks": 1, "rollout.max_new_tokens": 40,
                 "rollout.reflect_max_new_tokens": 16, "out_dir": tmp_path / "eval"}
    results = evaluate_policy(load_config([f"{k}={v}" for k, v in overrides.items()]))
    assert results["attempt 1"]["success"] == 0.0
    deadline = time.monotonic() + 10
    while (left := set(threading.enumerate()) - before) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not left, f"threads left running: {sorted(t.name for t in left)}"
