"""TP=2, PP=2, DP=2, PP=2 x VPP=2 (2 gloo ranks) and TP=2 x PP=2 (4 ranks) compute what one rank computes.

Same checkpoint, batch and seed: log-probs and logits before, the step's metrics, and every
updated weight after one optimizer step (fp32, tight tolerance). The interleaved case (two
virtual stages per pipeline rank) runs a 4-layer model: one layer per model chunk.
"""

from __future__ import annotations

import pytest
import torch
from harness import LOSS, save_tiny_hf, spawn, trainer_config
from workers import layouts, one_step

from erl_mega.train.layout import parallel_layout
from erl_mega.train.megatron_trainer import MegatronTrainer

pytestmark = pytest.mark.slow
# name: (ranks, tp, pp, vpp, model layers)
CASES = {
    "tp2": (2, 2, 1, 1, 2),
    "pp2": (2, 1, 2, 1, 2),
    "dp2": (2, 1, 1, 1, 2),
    "pp2xvpp2": (2, 1, 2, 2, 4),
    "tp2xpp2": (4, 2, 2, 1, 2),
}
EXACT_METRICS = ("policy_loss", "distill_loss", "grad_norm", "logprob_gap_mean", "logprob_gap_max")


@pytest.fixture(scope="module")
def hf_paths(tmp_path_factory):
    """A tiny Qwen2 checkpoint per layer count, by layers."""
    root = tmp_path_factory.mktemp("hf")
    return {layers: save_tiny_hf(root / f"qwen2_{layers}l", "qwen2", num_hidden_layers=layers) for layers in (2, 4)}


@pytest.fixture(scope="module")
def single(hf_paths, megatron_parallel):
    return {layers: one_step(MegatronTrainer(path, trainer_config(), LOSS)) for layers, path in hf_paths.items()}


@pytest.fixture(scope="module")
def results(hf_paths, tmp_path_factory):
    out = tmp_path_factory.mktemp("results")
    for ranks in sorted({case[0] for case in CASES.values()}):
        cases = [(name, hf_paths[layers], tp, pp, vpp) for name, (n, tp, pp, vpp, layers) in CASES.items() if n == ranks]
        spawn(ranks, layouts, out, cases)
    return {name: torch.load(out / f"{name}.pt", weights_only=False) for name in CASES}


@pytest.mark.parametrize("name", CASES)
def test_layout_matches_single_rank(results, single, name):
    got, want = results[name], single[CASES[name][-1]]
    torch.testing.assert_close(got["logp"], want["logp"], rtol=0, atol=1e-5)
    if got["logits"] is not None:
        torch.testing.assert_close(got["logits"], want["logits"], rtol=0, atol=1e-5)
    assert got["metrics"].keys() == want["metrics"].keys()
    for key in EXACT_METRICS:  # token-mean diagnostics (entropy, kl, clip_frac) are share-weighted per micro-batch
        assert got["metrics"][key] == pytest.approx(want["metrics"][key], rel=1e-5, abs=1e-7), key
    assert got["hf"].keys() == want["hf"].keys()
    # atol 1e-5 = 1% of lr: Adam's first step is lr * g / (|g| + eps), so a gradient within
    # reduction-order noise of 0 may move by up to that much.
    for key, tensor in want["hf"].items():
        torch.testing.assert_close(got["hf"][key], tensor, rtol=0, atol=1e-5, msg=lambda m, key=key: f"{key}: {m}")


def test_impossible_layouts_are_one_error(hf_paths):
    from erl_mega.model.hf_io import load_hf_config

    config = load_hf_config(hf_paths[2])
    with pytest.raises(ValueError) as err:
        parallel_layout(6, tp=4, pp=4, hf_config=config)
    message = str(err.value)
    assert message.count("\n") == 0
    for field in ("world size 6", "num_key_value_heads=2", "num_hidden_layers=2", "trainer.tp=4", "trainer.pp=4"):
        assert field in message
    for pp, vpp in ((1, 2), (2, 2)):  # virtual stages need a pipeline, and a layer each
        with pytest.raises(ValueError, match=f"trainer.vpp={vpp}"):
            parallel_layout(2, tp=1, pp=pp, hf_config=config, vpp=vpp)
    assert parallel_layout(8, tp=2, pp=2, hf_config=config).dp == 2
