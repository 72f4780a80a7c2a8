"""A checkpoint written at TP=2, PP=2, PP=2 x VPP=2 or DP=2 (2 gloo ranks) resumes on one rank exactly; TP=2's at DP=2 too.

megatron-core's distributed checkpoint (model and distributed-optimizer shards, fully
reshardable): the resuming layout loads it, takes the next step, and holds the weights the
uninterrupted 2-rank run holds after that step (fp32, tight tolerance).
"""

from __future__ import annotations

import pytest
import torch
from harness import LOSS, make_batch, save_tiny_hf, spawn, trainer_config
from workers import save_midway

from erl_mega.train.megatron_trainer import MegatronTrainer

pytestmark = pytest.mark.slow
# name: (tp, pp, vpp); the first is also resumed at DP=2
LAYOUTS = {"tp2": (2, 1, 1), "dp2": (1, 1, 1), "pp2": (1, 2, 1), "pp2xvpp2": (1, 2, 2)}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("reshard")
    hf_path = save_tiny_hf(root / "qwen2", "qwen2", tied=True, num_hidden_layers=4)  # a layer per virtual stage
    spawn(2, save_midway, hf_path, root, LAYOUTS)
    return hf_path, root


@pytest.mark.parametrize("name", LAYOUTS)
def test_resume_on_one_rank_takes_the_same_next_step(saved, megatron_parallel, name):
    hf_path, root = saved
    trainer = MegatronTrainer(hf_path, trainer_config(), LOSS)
    trainer.load(root / name / "trainer.pt")
    assert trainer.version == 1
    trainer.step(make_batch(seed=1))
    straight = torch.load(root / f"{name}.pt", weights_only=False)
    assert_same_weights(trainer.hf_state(), straight)


def test_tp2_checkpoint_resumes_at_dp2(saved):
    _, root = saved
    assert_same_weights(torch.load(root / "dp2_resumed.pt", weights_only=False), torch.load(root / "tp2.pt", weights_only=False))


def assert_same_weights(resumed: dict, straight: dict) -> None:
    assert resumed.keys() == straight.keys()
    # atol 1e-5 as in test_parallel_equivalence: reduction order differs across layouts.
    for name, tensor in straight.items():
        torch.testing.assert_close(resumed[name], tensor, rtol=0, atol=1e-5, msg=lambda m, name=name: f"{name}: {m}")
