#!/usr/bin/env bash
# One node: N ranks (GPUs, or gloo processes on CPU) run `erl-mega train` together.
#   NPROC=2 scripts/torchrun.sh trainer.tp=2            # CPU: TP=2 over gloo
#   NPROC=8 scripts/torchrun.sh model.path=/ckpt/Qwen3-4B trainer.tp=2   # 8 GPUs: TP=2 x DP=4
set -euo pipefail
exec torchrun --standalone --nproc-per-node "${NPROC:-2}" -m erl_mega train "$@"
