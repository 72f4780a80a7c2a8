"""The planner's per-rank state bytes against what megatron-core allocates on gloo at several TP/PP/DP layouts."""

import json

import pytest
from harness import save_tiny_hf, spawn
from plan_workers import layer_activations, measure
from saved_tensors import MBS, SEQ, hf_config

from erl_mega.plan.memory import layer_activation_bytes, state_bytes
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


def test_layer_activation_bytes_at_tp2_equal_saved_tensors(tmp_path):
    """Sharded heads and MLP, replicated norms and RoPE tables: each TP rank saves what the planner says."""
    model_types = ["llama", "qwen3"]
    spawn(2, layer_activations, tmp_path, model_types)
    for model_type in model_types:
        (tmp_path / model_type).mkdir()
        (tmp_path / model_type / "config.json").write_text(hf_config(model_type).to_json_string())
        want = layer_activation_bytes(load_shape(str(tmp_path / model_type)), SEQ, MBS, 2, "none", dtype_bytes=4)
        assert [json.loads((tmp_path / f"{model_type}_{r}.json").read_text()) for r in range(2)] == [want, want]
