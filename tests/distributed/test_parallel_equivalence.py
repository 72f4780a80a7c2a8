"""TP=2, PP=2, DP=2 (2 gloo ranks) and TP=2 x PP=2 (4 ranks) compute what one rank computes.

Same checkpoint, batch and seed: log-probs and logits before, the step's metrics, and every
updated weight after one optimizer step (fp32, tight tolerance).
"""

from __future__ import annotations

import pytest
import torch
from harness import LOSS, save_tiny_hf, spawn, trainer_config
from workers import layouts, one_step

from erl_mega.train.layout import parallel_layout
from erl_mega.train.megatron_trainer import MegatronTrainer

pytestmark = pytest.mark.slow
TWO_RANK_LAYOUTS = [(2, 1), (1, 2), (1, 1)]  # TP=2, PP=2, DP=2
EXACT_METRICS = ("policy_loss", "distill_loss", "grad_norm", "logprob_gap_mean", "logprob_gap_max")


@pytest.fixture(scope="module")
def hf_path(tmp_path_factory):
    return save_tiny_hf(tmp_path_factory.mktemp("hf") / "qwen2", "qwen2")


@pytest.fixture(scope="module")
def single(hf_path, megatron_parallel):
    return one_step(MegatronTrainer(hf_path, trainer_config(), LOSS))


@pytest.fixture(scope="module")
def results(hf_path, tmp_path_factory):
    out = tmp_path_factory.mktemp("results")
    spawn(2, layouts, hf_path, out, TWO_RANK_LAYOUTS)
    spawn(4, layouts, hf_path, out, [(2, 2)])
    return {(tp, pp): torch.load(out / f"tp{tp}_pp{pp}.pt", weights_only=False) for tp, pp in TWO_RANK_LAYOUTS + [(2, 2)]}


@pytest.mark.parametrize("tp,pp", TWO_RANK_LAYOUTS + [(2, 2)], ids=["tp2", "pp2", "dp2", "tp2xpp2"])
def test_layout_matches_single_rank(results, single, tp, pp):
    got = results[(tp, pp)]
    torch.testing.assert_close(got["logp"], single["logp"], rtol=0, atol=1e-5)
    if got["logits"] is not None:
        torch.testing.assert_close(got["logits"], single["logits"], rtol=0, atol=1e-5)
    assert got["metrics"].keys() == single["metrics"].keys()
    for key in EXACT_METRICS:  # token-mean diagnostics (entropy, kl, clip_frac) are share-weighted per micro-batch
        assert got["metrics"][key] == pytest.approx(single["metrics"][key], rel=1e-5, abs=1e-7), key
    assert got["hf"].keys() == single["hf"].keys()
    # atol 1e-5 = 1% of lr: Adam's first step is lr * g / (|g| + eps), so a gradient within
    # reduction-order noise of 0 may move by up to that much.
    for name, tensor in single["hf"].items():
        torch.testing.assert_close(got["hf"][name], tensor, rtol=0, atol=1e-5, msg=lambda m, name=name: f"{name}: {m}")


def test_impossible_layouts_are_one_error(hf_path):
    from erl_mega.model.hf_io import load_hf_config

    config = load_hf_config(hf_path)
    with pytest.raises(ValueError) as err:
        parallel_layout(6, tp=4, pp=4, hf_config=config)
    message = str(err.value)
    assert message.count("\n") == 0
    for field in ("world size 6", "num_key_value_heads=2", "num_hidden_layers=2", "trainer.tp=4", "trainer.pp=4"):
        assert field in message
    assert parallel_layout(8, tp=2, pp=2, hf_config=config).dp == 2
