"""`erl-mega export`: a run's latest checkpoint as an ordinary HF directory (`<out_dir>/hf`)."""

from __future__ import annotations

from pathlib import Path

import torch

from rich.console import Console

from erl_mega.config.schema import RunConfig
from erl_mega.model.hf_io import load_tokenizer, save_hf_checkpoint
from erl_mega.run import resolve_policy
from erl_mega.train.checkpoint import load_checkpoint, resume_point
from erl_mega.train.dist import init_parallel, is_leader
from erl_mega.train.megatron_trainer import LossConfig, MegatronTrainer


def export_hf(cfg: RunConfig) -> Path:
    """Gather the trained weights (collective under torchrun, in the run's layout) and write them as HF."""
    init_parallel(cfg.trainer.tp, cfg.trainer.pp, cfg.seed)
    out = Path(cfg.out_dir)
    checkpoint = resume_point(out)
    if checkpoint is None:
        raise ValueError(f"out_dir={str(out)!r} holds no checkpoint to export (train with checkpoint_every > 0)")
    policy_dir = resolve_policy(cfg, Console(quiet=not is_leader()))
    loss = LossConfig(cfg.algo.loss, cfg.algo.distill_coef)
    params_dtype = torch.float32 if cfg.model.dtype == "float32" else torch.bfloat16  # as the run trained
    trainer = MegatronTrainer(policy_dir, cfg.trainer, loss, seed=cfg.seed, params_dtype=params_dtype)
    load_checkpoint(checkpoint, trainer)
    state = trainer.hf_state()
    dest = out / "hf"
    if is_leader():
        save_hf_checkpoint(dest, trainer.hf_config, state, load_tokenizer(policy_dir))
        Console().print(f"exported {checkpoint.name} (weight version {trainer.version}) to {dest}")
    return dest
