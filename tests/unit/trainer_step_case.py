"""One MegatronTrainer step in a fresh process (CPU or CUDA, by CUDA_VISIBLE_DEVICES), for device comparisons.

    python tests/unit/trainer_step_case.py HF_DIR BATCH.pt OUT.pt {float32,bfloat16}
"""

from __future__ import annotations

import sys

import torch

from erl_mega.kernels.losses import PolicyLossConfig
from erl_mega.train.dist import init_parallel
from erl_mega.train.megatron_trainer import LossConfig, MegatronTrainer
from erl_mega.train.trainer import TrainerConfig


def main(hf_dir: str, batch_path: str, out_path: str, dtype: str) -> None:
    init_parallel(tp=1, pp=1, seed=0)
    cfg = TrainerConfig(lr=1e-3, micro_batch_size=2, ppo_mini_batch_size=5)
    trainer = MegatronTrainer(hf_dir, cfg, LossConfig(PolicyLossConfig(kl_coef=0.001)), params_dtype=getattr(torch, dtype))
    metrics = trainer.step(torch.load(batch_path, weights_only=False))
    main_dtypes = {str(p.dtype) for group in trainer.optimizer.optimizer.param_groups for p in group["params"]}
    device = str(next(trainer.model.parameters()).device)
    torch.save({"metrics": metrics, "hf": trainer.hf_state(), "main_dtypes": main_dtypes, "device": device}, out_path)


if __name__ == "__main__":
    main(*sys.argv[1:])
