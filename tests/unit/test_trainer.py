"""The embedded Megatron trainer: log-prob agreement, exact micro-batching, PPO mini-batches, devices, sync, save/load."""

import dataclasses
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from erl_mega.kernels.losses import OffPolicyConfig, PolicyLossConfig, ppo_clip_per_token
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
from erl_mega.rollout.trajectory import Segment
from erl_mega.train.batch import collate
from erl_mega.train import megatron_trainer
from erl_mega.train.megatron_model import gpt_hidden_states
from erl_mega.train.megatron_trainer import LossConfig, MegatronTrainer
from erl_mega.train.micro_batches import ModelInputs, mini_batch_rows, padded_micro_batches, select_rows
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


def trainer(path, mbs=16, kl=0.001, lr=1e-3, **extra):
    cfg = TrainerConfig(lr=lr, micro_batch_size=mbs, grad_clip=1e9, **extra)  # no clipping: gradients compare as computed
    return MegatronTrainer(path, cfg, LossConfig(PolicyLossConfig(kl_coef=kl)))


def grads(t):
    """The gradient of every parameter from the trainer's last update (megatron's fp32 grad buffers)."""
    return {name: p.main_grad.clone() for name, p in t.model.named_parameters()}


def assert_same_grads(a, b):
    for name, grad in grads(a).items():
        # gradients are sums of rounded fp32 terms in another order: equal to a few ulps of the largest
        torch.testing.assert_close(grad, grads(b)[name], rtol=1e-4, atol=1e-6 * (1 + float(grad.abs().max())), msg=name)


def test_rollout_and_trainer_logprobs_agree(policy, episodes, megatron_parallel):
    path, chat = policy
    batch = make_batch(episodes, chat)
    mask = batch.loss_mask > 0
    assert mask.sum() > 20
    recomputed = trainer(path).logprobs(batch.input_ids, batch.targets)
    assert (recomputed[mask] - batch.rollout_logprobs[mask]).abs().max() < 1e-4


def test_each_row_is_scored_at_its_own_temperature(policy, episodes, megatron_parallel):
    path, chat = policy
    batch = make_batch(episodes, chat)
    temps = torch.linspace(0.5, 1.5, batch.num_rows)
    got = trainer(path).logprobs(batch.input_ids, batch.targets, temps)
    logits = AutoModelForCausalLM.from_pretrained(path)(batch.input_ids).logits.double() / temps.double()[:, None, None]
    want = logits.log_softmax(-1).gather(-1, batch.targets[..., None])[..., 0]
    on = torch.arange(batch.input_ids.shape[1])[None] < batch.lengths[:, None]
    torch.testing.assert_close(got[on], want[on].float(), rtol=0, atol=1e-4)


def test_trainer_reports_the_gap_to_rollouts_at_their_temperature(policy, episodes, megatron_parallel):
    path, chat = policy
    batch = make_batch(episodes, chat)
    assert trainer(path).step(batch)["logprob_gap_max"] < 1e-4  # sampled at 1.0: scored at 1.0
    hotter = dataclasses.replace(batch, temperatures=torch.full((batch.num_rows,), 2.0))
    assert trainer(path).step(hotter)["logprob_gap_mean"] > 1e-2  # scored at 2.0: the gap shows it


def recontextualised_batch(episodes, chat):
    """Policy rows, plus RAFT rows re-paired with another system message (their engine log-probs are stale)."""
    other = Segment(chat.system("Another instruction, longer than the one the episodes were sampled under."))
    rows = [TrainRow(tr, "policy", "attempt1", advantage=(-1) ** i) for i, tr in enumerate(episodes)]
    rows += [TrainRow(tr.with_system(other), "policy", "distill", advantage=1.0) for tr in episodes[:3]]
    batch = collate(rows, chat.tokenizer.pad_token_id)
    # an untrained policy barely reads its prompt; a trained one's log-probs move with it: put them e^1 off
    stale = (~batch.behaviour_known)[:, None] * batch.loss_mask
    return dataclasses.replace(batch, rollout_logprobs=batch.rollout_logprobs - stale)


def test_recontextualised_rows_get_no_importance_weight_and_no_gap(policy, episodes, megatron_parallel):
    path, chat = policy
    batch = recontextualised_batch(episodes, chat)
    assert batch.behaviour_known.tolist() == [True] * len(episodes) + [False] * 3
    plain = trainer(path, kl=0.0)
    m_plain = plain.step(batch)
    for loss in (PolicyLossConfig(kl_coef=0.0, tis_cap=1.5),
                 PolicyLossConfig(kl_coef=0.0, off_policy=OffPolicyConfig(mode="mask", cap=1.5, floor=0.7))):
        corrected = MegatronTrainer(path, TrainerConfig(lr=1e-3, micro_batch_size=16, grad_clip=1e9), LossConfig(loss))
        m = corrected.step(batch)
        assert_same_grads(corrected, plain)  # every known row's weight is ~1 (same weights), the others exactly 1
        assert m["logprob_gap_max"] < 1e-4 and m_plain["logprob_gap_max"] < 1e-4  # the stale rows are left out


def test_old_logprobs_from_rollout_are_the_trainers_on_recontextualised_rows(policy, episodes, megatron_parallel):
    path, chat = policy
    batch = recontextualised_batch(episodes, chat)
    # a tiny lr, as in test_micro_batching_equals_one_big_batch_per_mini_batch: the second mini-batch's inputs stay
    # equal to rounding on any machine (at 1e-2 one Adam step turned rounding flips into 2·lr weight moves)
    recomputed, from_rollout = trainer(path, lr=1e-7, ppo_mini_batch_size=5), trainer(path, lr=1e-7, ppo_mini_batch_size=5,
                                                                                      old_logprobs="rollout")
    m_re, m_ro = recomputed.step(batch), from_rollout.step(batch)
    assert_same_grads(recomputed, from_rollout)  # known rows: rollout ~ trainer; re-contextualised: the trainer's
    assert m_ro["clip_frac"] == pytest.approx(m_re["clip_frac"], abs=1e-6)


def test_micro_batching_equals_one_big_batch(policy, episodes, megatron_parallel):
    path, chat = policy
    batch = make_batch(episodes, chat)
    big, small = trainer(path, mbs=64), trainer(path, mbs=2)
    m_big, m_small = big.step(batch), small.step(batch)
    assert m_big["policy_loss"] == pytest.approx(m_small["policy_loss"], rel=1e-5, abs=1e-7)
    assert m_big["distill_loss"] == pytest.approx(m_small["distill_loss"], rel=1e-5)
    assert_same_grads(big, small)
    assert any(not torch.equal(a, b) for a, b in zip(big.model.parameters(), trainer(path).model.parameters()))


def test_micro_batching_equals_one_big_batch_per_mini_batch(policy, episodes, megatron_parallel):
    path, chat = policy
    batch = make_batch(episodes, chat)
    # Adam's first step moves every weight by ~lr whatever its gradient's size, so a near-zero gradient whose
    # rounding flips sign moves a weight by 2·lr: a tiny lr keeps the second mini-batch's inputs equal to
    # rounding, so its gradients compare at the same tolerance on any machine.
    big, small = (trainer(path, mbs=mbs, lr=1e-7, ppo_mini_batch_size=5) for mbs in (64, 2))
    m_big, m_small = big.step(batch), small.step(batch)
    assert m_big["ppo_updates"] == m_small["ppo_updates"] == 2
    for key in ("policy_loss", "distill_loss", "clip_frac", "ppo_kl"):
        assert m_big[key] == pytest.approx(m_small[key], rel=1e-4, abs=1e-7), key
    assert_same_grads(big, small)  # the second mini-batch's, after the first's update


def test_second_mini_batch_is_off_policy_as_a_hand_built_reference(policy, episodes, megatron_parallel):
    path, chat = policy
    batch = make_batch(episodes, chat)
    ppo = trainer(path, mbs=64, lr=1e-2, ppo_mini_batch_size=5)
    got = ppo.step(batch)
    first, second = mini_batch_rows(batch.num_rows, 5, seed=0, step=0, epoch=0)
    # reference: the old log-probs before any update, then one plain update per mini-batch against them
    ref = trainer(path, mbs=64, lr=1e-2, old_logprobs="rollout")
    old = ref.logprobs(batch.input_ids, batch.targets) * batch.loss_mask
    frozen = dataclasses.replace(batch, rollout_logprobs=old)
    ref.step(select_rows(frozen, first))
    new = ref.logprobs(batch.input_ids, batch.targets)
    ref.step(select_rows(frozen, second))
    assert_same_grads(ppo, ref)
    mask = (batch.loss_mask * (~batch.is_distill)[:, None])[second]
    _, clipped = ppo_clip_per_token(new[second], old[second], batch.advantages[second], PolicyLossConfig())
    clip_frac = float((clipped * mask).sum() / mask.sum())
    ppo_kl = float(((old - new)[second] * mask).sum() / mask.sum())
    assert clip_frac > 0.1 and abs(ppo_kl) > 1e-2  # the ratio moved: clipping acts
    # the first mini-batch is on-policy (ratio 1, nothing clipped): the step's mean is half the second's
    assert got["clip_frac"] == pytest.approx(clip_frac / 2, abs=1e-6)
    assert got["ppo_kl"] == pytest.approx(ppo_kl / 2, rel=1e-3, abs=1e-6)


def test_mini_batches_reshuffle_every_epoch_and_keep_one_update_by_default():
    assert [r.tolist() for r in mini_batch_rows(6, None, 0, 0, 0)] == [list(range(6))]
    epochs = [torch.cat(mini_batch_rows(10, 4, seed=3, step=1, epoch=e)) for e in range(3)]
    assert all(sorted(order.tolist()) == list(range(10)) for order in epochs)
    assert len({tuple(order.tolist()) for order in epochs}) == 3
    assert [len(r) for r in mini_batch_rows(10, 4, 3, 1, 0)] == [4, 4, 2]
    assert torch.equal(epochs[0], torch.cat(mini_batch_rows(10, 4, seed=3, step=1, epoch=0)))


def test_lm_head_sees_only_loss_tokens(policy, episodes):
    _, chat = policy
    batch = make_batch(episodes, chat)
    (mb,) = padded_micro_batches(batch, 64, 0, 1, ("token-mean", "token-mean"))
    assert mb.targets.numel() == int((batch.loss_mask > 0).sum()) < mb.input_ids.numel() / 2
    flat = mb.input_ids.reshape(-1)
    assert torch.equal(batch.targets[mb.batch_rows, mb.batch_cols], mb.targets)
    assert torch.equal(flat[mb.loss_index], batch.input_ids[mb.batch_rows, mb.batch_cols])


def test_model_inputs_move_every_tensor(policy, episodes):
    _, chat = policy
    batch = make_batch(episodes, chat)
    for mb in padded_micro_batches(batch, 4, 0, 1, ("token-mean", "token-mean")):
        moved = mb.to("meta")
        tensors = [getattr(moved, f.name) for f in dataclasses.fields(moved)]
        assert all(t.device.type == "meta" for t in tensors if isinstance(t, torch.Tensor))


def test_every_tensor_handed_to_the_model_is_on_its_device(policy, episodes, megatron_parallel, monkeypatch):
    path, chat = policy
    moved, seen = [], []
    to = ModelInputs.to

    def spy_to(self, device):
        out = to(self, device)
        moved.append((torch.device(device), out))
        return out

    def spy_forward(model, input_ids, position_ids, packed_seq_params=None):
        device = next(model.parameters()).device
        seen.append(device)
        assert input_ids.device == position_ids.device == device
        return gpt_hidden_states(model, input_ids, position_ids, packed_seq_params)

    monkeypatch.setattr(ModelInputs, "to", spy_to)
    monkeypatch.setattr(megatron_trainer, "gpt_hidden_states", spy_forward)
    t = trainer(path, mbs=4, ppo_mini_batch_size=5)
    t.step(make_batch(episodes, chat))
    device = next(t.model.parameters()).device
    assert len(moved) == len(seen) > 0 and all(d == device for d, _ in moved)
    for _, mb in moved:
        assert all(v.device == device for v in vars(mb).values() if isinstance(v, torch.Tensor))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_a_cuda_step_matches_the_cpu_step(policy, episodes, tmp_path):
    path, chat = policy
    torch.save(make_batch(episodes, chat), tmp_path / "batch.pt")
    script = Path(__file__).with_name("trainer_step_case.py")

    def run(name, dtype, cuda):
        env = os.environ | ({} if cuda else {"CUDA_VISIBLE_DEVICES": ""})
        out = tmp_path / f"{name}.pt"
        subprocess.run([sys.executable, script, path, tmp_path / "batch.pt", out, dtype], env=env, check=True, timeout=600)
        return torch.load(out, weights_only=False)

    cpu, gpu, bf16 = run("cpu", "float32", False), run("gpu", "float32", True), run("bf16", "bfloat16", True)
    assert cpu["device"] == "cpu" and gpu["device"].startswith("cuda")
    for key in ("policy_loss", "distill_loss", "clip_frac"):
        assert gpu["metrics"][key] == pytest.approx(cpu["metrics"][key], rel=1e-3, abs=1e-5), key
    for name, tensor in cpu["hf"].items():
        torch.testing.assert_close(gpu["hf"][name].cpu(), tensor, rtol=1e-3, atol=1e-4, msg=name)
    assert bf16["main_dtypes"] == {"torch.float32"}  # bf16 model, fp32 main weights in the optimizer
    assert bf16["hf"]["model.embed_tokens.weight"].dtype == torch.bfloat16
    assert bf16["metrics"]["policy_loss"] == pytest.approx(cpu["metrics"]["policy_loss"], rel=5e-2, abs=1e-2)


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
