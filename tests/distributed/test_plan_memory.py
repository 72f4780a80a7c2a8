"""The planner's per-rank state bytes against what megatron-core allocates on gloo at several TP/PP/DP layouts."""

import json

import pytest
from harness import save_tiny_hf, spawn
from plan_workers import measure

from erl_mega.plan.memory import state_bytes
from erl_mega.plan.shape import load_shape

pytestmark = pytest.mark.slow


def test_state_bytes_equal_megatron_allocations(tmp_path):
    hf = save_tiny_hf(tmp_path / "hf", "qwen3")
    layouts = [(2, 1), (1, 2), (1, 1)]  # on 2 ranks: TP=2, PP=2, DP=2
    spawn(2, measure, hf, tmp_path, layouts)
    shape = load_shape(str(hf))
    for tp, pp in layouts:
        dp = 2 // (tp * pp)
        for rank in range(2):
            got = json.loads((tmp_path / f"{tp}_{pp}_{rank}.json").read_text())
            want = state_bytes(shape, tp, pp, dp, got["stage"], "float32")
            assert got["params"] == want["params"], (tp, pp, rank)
            # megatron pads its gradient buffer (and so the optimizer's shards) to aligned bucket sizes
            assert want["grads"] <= got["grads"] <= want["grads"] * 1.05 + 4 * 128 * dp, (tp, pp, rank, got, want)
            # each DP rank's Adam shard is its slice of that padded buffer: padding lands on the last slice
            assert abs(got["optimizer"] - want["optimizer"]) <= 0.05 * want["optimizer"], (tp, pp, rank, got, want)
    dp_ranks = [json.loads((tmp_path / f"1_1_{rank}.json").read_text()) for rank in range(2)]
    assert sum(r["optimizer"] for r in dp_ranks) == 2 * state_bytes(shape, 1, 1, 2, 0, "float32")["optimizer"]
