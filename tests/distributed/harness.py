"""Spawned gloo worlds for the distributed tests: a tiny HF checkpoint, a synthetic TrainBatch, a runner."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Callable

import torch
import torch.multiprocessing as mp
from transformers import AutoConfig, AutoModelForCausalLM

from erl_mega.kernels.losses import PolicyLossConfig
from erl_mega.train.batch import TrainBatch
from erl_mega.train.megatron_trainer import LossConfig
from erl_mega.train.trainer import TrainerConfig

# heads 4 / kv-heads 2 / vocab 256 / ffn 128 divide by tp=2; 2 layers by pp=2.
SHAPE = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
             intermediate_size=128, vocab_size=256, max_position_embeddings=64)
LOSS = LossConfig(PolicyLossConfig(kl_coef=0.01))
# `erl-mega train` overrides for a run of seconds: a tiny policy, a short warm-up, two tasks of two rollouts
TINY = [
    "model.tiny.hidden_size=64", "model.tiny.num_layers=2", "model.tiny.intermediate_size=128",
    "model.tiny.vocab_size=400", "model.warmup.episodes=48", "model.warmup.epochs=1",
    "tasks_per_step=2", "algo.n_rollouts=2", "eval_tasks=4", "plot=false",
]


def save_tiny_hf(path: Path, model_type: str, tied: bool = False, seed: int = 0, **overrides: object) -> Path:
    """A tiny random HF causal LM (norms around 1, biases nonzero) saved to `path`."""
    config = AutoConfig.for_model(model_type, **(SHAPE | {"tie_word_embeddings": tied} | overrides))
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():
        for name, param in model.named_parameters():
            param.copy_((1.0 if "norm" in name else 0.0) + 0.2 * torch.randn_like(param))
    model.save_pretrained(path)
    return path


def make_batch(rows: int = 8, width: int = 12, vocab: int = 256, seed: int = 0) -> TrainBatch:
    """Right-padded rows of uneven length, policy and distillation rows mixed, as `collate` builds them."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(3, width + 1, (rows,), generator=g)
    on = torch.arange(width)[None] < lengths[:, None]
    ids = torch.randint(1, vocab, (rows, width + 1), generator=g)
    mask = (torch.rand(rows, width, generator=g) < 0.7).float() * on
    is_distill = torch.arange(rows) % 3 == 2
    return TrainBatch(
        input_ids=ids[:, :-1] * on,
        targets=ids[:, 1:] * on,
        loss_mask=mask,
        advantages=torch.randn(rows, 1, generator=g).expand(rows, width).contiguous(),
        rollout_logprobs=-torch.rand(rows, width, generator=g) * mask,
        behaviour_known=~is_distill,
        distill_weight=torch.where(is_distill, 0.5 + torch.rand(rows, generator=g), 0.0),
        is_distill=is_distill,
        versions=(0,) * rows,
        temperatures=torch.ones(rows),
        lengths=lengths,
    )


def trainer_config(tp: int = 1, pp: int = 1, **extra: object) -> TrainerConfig:
    return TrainerConfig(lr=1e-3, micro_batch_size=3, tp=tp, pp=pp, **extra)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank: int, world: int, port: int, fn: Callable, args: tuple) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from erl_mega.train.dist import destroy_parallel

    try:
        fn(rank, *args)
    finally:
        destroy_parallel()


def spawn(world: int, fn: Callable, *args: object) -> None:
    """Run `fn(rank, *args)` on `world` gloo ranks (torchrun's env vars set); raises if any rank fails."""
    mp.start_processes(_entry, args=(world, free_port(), fn, args), nprocs=world, start_method="spawn")
