"""The embedded Megatron trainer: rollout/trainer log-prob agreement, exact micro-batching, sync, save/load."""

import random

import pytest
import torch
from transformers import AutoModelForCausalLM

from erl_mega.kernels.losses import PolicyLossConfig
from erl_mega.algo.rows import TrainRow
from erl_mega.config.schema import TinyModelConfig
from erl_mega.envs.frozenlake import FrozenLake
from erl_mega.model.hf_io import save_hf_checkpoint
from erl_mega.model.tiny import init_tiny_state, tiny_config
from erl_mega.model.tokenizer import train_tokenizer
from erl_mega.rollout.agent_loop import EpisodeSpec, play_episodes
from erl_mega.rollout.chat import ChatFormat
from erl_mega.rollout.engine import SamplingParams
from erl_mega.rollout.local import LocalEngine
from erl_mega.train.batch import collate
from erl_mega.train.megatron_trainer import LossConfig, MegatronTrainer
from erl_mega.train.trainer import TrainerConfig
from erl_mega.weights.sync import InProcessWeightSync

TINY = TinyModelConfig(hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=128, vocab_size=320, max_position=512)


@pytest.fixture(scope="module")
def policy(tmp_path_factory):
    texts = ["<action>up</action> <action>down</action> <action>left</action> <action>right</action> .x*@ moved"] * 30
    tokenizer = train_tokenizer(texts, TINY.vocab_size)
    config = tiny_config(TINY, tokenizer)
    path = tmp_path_factory.mktemp("policy") / "hf"
    return save_hf_checkpoint(path, config, init_tiny_state(config, seed=0), tokenizer), ChatFormat(tokenizer)


@pytest.fixture(scope="module")
def episodes(policy):
    path, chat = policy
    engine = LocalEngine(AutoModelForCausalLM.from_pretrained(path), chat.tokenizer.pad_token_id)
    specs = [EpisodeSpec(seed, "Reach the target.", seed) for seed in range(6)]
    params = SamplingParams(max_new_tokens=6, temperature=1.0, stop_token_ids=chat.stop_ids)
    return play_episodes(lambda: FrozenLake(max_turns=3), engine, chat, specs, params, 512)


def make_batch(episodes, chat, seed=0):
    rng = random.Random(seed)
    rows = [TrainRow(tr, "policy", "attempt1", advantage=rng.uniform(-1, 1)) for tr in episodes]
    rows += [TrainRow(tr, "distill", "attempt2", weight=0.5 + i / 4) for i, tr in enumerate(episodes[:3])]
    return collate(rows, chat.tokenizer.pad_token_id)


def trainer(path, mbs=16, kl=0.001):
    return MegatronTrainer(path, TrainerConfig(lr=1e-3, micro_batch_size=mbs), LossConfig(PolicyLossConfig(kl_coef=kl)))


def test_rollout_and_trainer_logprobs_agree(policy, episodes, megatron_parallel):
    path, chat = policy
    batch = make_batch(episodes, chat)
    mask = batch.loss_mask > 0
    assert mask.sum() > 20
    recomputed = trainer(path).logprobs(batch.input_ids, batch.targets)
    assert (recomputed[mask] - batch.rollout_logprobs[mask]).abs().max() < 1e-4


def test_micro_batching_equals_one_big_batch(policy, episodes, megatron_parallel):
    path, chat = policy
    batch = make_batch(episodes, chat)
    big, small = trainer(path, mbs=64), trainer(path, mbs=2)
    m_big, m_small = big.step(batch), small.step(batch)
    assert m_big["policy_loss"] == pytest.approx(m_small["policy_loss"], rel=1e-5, abs=1e-7)
    assert m_big["distill_loss"] == pytest.approx(m_small["distill_loss"], rel=1e-5)
    for (name, a), (_, b) in zip(big.model.named_parameters(), small.model.named_parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
    assert any(not torch.equal(a, b) for a, b in zip(big.model.parameters(), trainer(path).model.parameters()))


def test_weight_sync_brings_the_engine_to_the_trainer(policy, episodes, megatron_parallel):
    path, chat = policy
    t = trainer(path)
    t.step(make_batch(episodes, chat))
    engine = LocalEngine(AutoModelForCausalLM.from_pretrained(path), chat.tokenizer.pad_token_id)
    stats = InProcessWeightSync().push(t, [engine])
    assert engine.weight_version == t.version == 1 and stats["sync_bytes"] > 0
    hf = engine.model.state_dict()
    for name, tensor in t.hf_state().items():
        torch.testing.assert_close(hf[name], tensor, rtol=0, atol=0, msg=name)


def test_save_load_resumes_exactly(policy, episodes, megatron_parallel, tmp_path):
    path, chat = policy
    first, second = make_batch(episodes, chat, 0), make_batch(episodes, chat, 1)
    a = trainer(path)
    a.step(first)
    a.save(tmp_path / "t.pt")
    b = trainer(path)
    b.load(tmp_path / "t.pt")
    a.step(second)
    b.step(second)
    assert a.version == b.version == 2
    for x, y in zip(a.model.parameters(), b.model.parameters()):
        assert torch.equal(x, y)
