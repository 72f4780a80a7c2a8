"""The embedded base policy: tokenizer + tiny model + SFT warm-up on demonstrations, cached on disk."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from pathlib import Path
from typing import Callable

from erl_mega.kernels.losses import PolicyLossConfig
from erl_mega.config.schema import EnvConfig, ModelConfig
from erl_mega.envs.base import make_env
from erl_mega.model.demos import DEMONSTRATED_ENVS, corpus, demonstrations
from erl_mega.model.hf_io import load_tokenizer, save_hf_checkpoint
from erl_mega.model.tiny import init_tiny_state, tiny_config
from erl_mega.model.tokenizer import train_tokenizer
from erl_mega.rollout.chat import ChatFormat
from erl_mega.train.batch import collate
from erl_mega.train.dist import barrier, is_leader
from erl_mega.train.megatron_trainer import LossConfig, MegatronTrainer
from erl_mega.train.trainer import TrainerConfig

RECIPE_VERSION = 5  # bump when demonstrations or the warm-up change, so stale caches are not reused


def base_policy_dir(model: ModelConfig, env: EnvConfig) -> Path:
    """Where the base policy for this recipe lives: a hash of everything that shapes it."""
    warmup = dataclasses.asdict(model.warmup)
    recipe = {"v": RECIPE_VERSION, "tiny": dataclasses.asdict(model.tiny), "warmup": warmup,
              "env": dataclasses.asdict(env), "seed": warmup.pop("seed")}
    digest = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]
    return Path(model.cache_dir).expanduser() / f"base-{env.name}-{digest}"


def ensure_base_policy(
    model: ModelConfig, env_cfg: EnvConfig, layout: TrainerConfig, progress: Callable[[int, int, float], None]
) -> Path:
    """Return the cached base policy, building it first if absent (`progress(step, total, loss)`).

    Collective under torchrun: every rank trains in the run's TP × PP × DP layout (`layout`);
    the leader writes the tokenizer, the initial weights and the result.
    """
    out, seed = base_policy_dir(model, env_cfg), model.warmup.seed
    barrier()
    if (out / "model.safetensors").exists():
        return out
    if env_cfg.name not in DEMONSTRATED_ENVS:
        raise ValueError(
            f"the embedded base policy is warmed up on {list(DEMONSTRATED_ENVS)} demonstrations; for env.name={env_cfg.name!r} "
            "set model.path to an HF checkpoint directory"
        )
    def make_world(facts: dict[str, str]):
        return make_env(env_cfg.name, max_turns=env_cfg.max_turns, **(env_cfg.options | facts))

    staging = out.with_name(out.name + ".init")
    if is_leader():
        bootstrap = ChatFormat(train_tokenizer(["a"], vocab_size=0))  # bytes only: to render demonstrations as text
        texts = corpus(demonstrations(make_world, bootstrap, env_cfg.initial_prompt, model.warmup, seed), bootstrap)
        tokenizer = train_tokenizer(texts, model.tiny.vocab_size, grid_cells=True)
        config = tiny_config(model.tiny, tokenizer)
        save_hf_checkpoint(staging, config, init_tiny_state(config, seed), tokenizer)
    barrier()
    tokenizer = load_tokenizer(staging)
    rows = demonstrations(make_world, ChatFormat(tokenizer), env_cfg.initial_prompt, model.warmup, seed)
    sft = dataclasses.replace(layout, lr=model.warmup.lr, micro_batch_size=model.warmup.batch_size)
    trainer = MegatronTrainer(staging, sft, LossConfig(policy=PolicyLossConfig(kl_coef=0.0)), seed=seed)
    bs = model.warmup.batch_size
    total = model.warmup.epochs * -(-len(rows) // bs)
    step = 0
    for _ in range(model.warmup.epochs):
        for start in range(0, len(rows), bs):
            metrics = trainer.step(collate(rows[start : start + bs], tokenizer.pad_token_id))
            step += 1
            progress(step, total, metrics.get("distill_loss", 0.0))
    state = trainer.hf_state()
    if is_leader():
        save_hf_checkpoint(out, trainer.hf_config, state, tokenizer)
        shutil.rmtree(staging, ignore_errors=True)
    barrier()
    return out
