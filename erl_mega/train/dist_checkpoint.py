"""The trainer's state through megatron-core's distributed checkpointing, resumable at another TP × PP × DP.

The model and the distributed optimizer describe their shards as ShardedTensors (global shape,
this rank's offsets); `dist_checkpointing.save` writes them with the torch_dist strategy
(torch.distributed.checkpoint, on gloo or NCCL) and `load` reads back the slices the loading
layout needs. Both go fully parallel over the DP group: replicas split the writes, and split
the reads, then exchange what they read. The optimizer uses megatron's `fully_reshardable` format:
moments and fp32 main params per parameter, in model space, so DP, TP and PP may all change.
Its `fully_sharded_model_space` default does not run in megatron-core 0.16
(`ShardedTensor.flattened_range is not supported`).

Two accommodations for torch's Adam (megatron-core 0.16 without Apex/TE), which keeps a
per-parameter `step` tensor:
- `init_adam_state`: `DistributedOptimizer.state_dict()` reads `step` from every parameter's
  state and asserts on a fresh, empty one, so the state is allocated at construction (zeros and
  step 0, what Adam's first step would allocate).
- `_load_optimizer`: `load_parameter_state_from_fully_reshardable` copies every destination key,
  `step` included, from a source without it (KeyError: 'step'), and `load_state_dict` hands all
  parameters one shared `step` tensor, which Adam's in-place `step += 1` would advance once per
  parameter. So the parameter state loads with `step` set aside, and each parameter gets its own.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
from megatron.core import dist_checkpointing, parallel_state
from megatron.core.dist_checkpointing.mapping import ShardedStateDict
from megatron.core.dist_checkpointing.serialization import (
    get_default_load_sharded_strategy,
    get_default_save_sharded_strategy,
)
from megatron.core.dist_checkpointing.strategies.fully_parallel import (
    FullyParallelLoadStrategyWrapper,
    FullyParallelSaveStrategyWrapper,
)
from megatron.core.models.gpt import GPTModel
from megatron.core.optimizer import ChainedOptimizer

from erl_mega.train import shard_writer
from erl_mega.train.dist import barrier

_FORMAT = {"distrib_optim_sharding_type": "fully_reshardable"}


def init_adam_state(optimizer: ChainedOptimizer) -> None:
    """Allocate each Adam's moments and a per-parameter `step` before the first step (see module doc)."""
    for opt in optimizer.chained_optimizers:
        opt.init_state_fn(opt.optimizer, opt.config)
        for state in opt.optimizer.state.values():
            state.setdefault("step", torch.tensor(0.0))


def save_trainer_state(directory: Path, model: Sequence[GPTModel], optimizer: ChainedOptimizer, version: int) -> None:
    """Write the policy's chunks, its optimizer and the weight version into `directory` (collective: every rank).

    The shard files are written by supervised workers (`shard_writer`): a failed, killed or hung
    writer is a ShardWriteError on every rank, never a hang."""
    directory.mkdir(parents=True, exist_ok=True)
    barrier()  # rank 0 checks the directory is empty before anyone writes
    strategy = FullyParallelSaveStrategyWrapper(get_default_save_sharded_strategy(), _dp_group())
    shard_writer.use_in_process_results()
    state = _sharded_state(model, optimizer, version, is_loading=False)
    shard_writer.execute(dist_checkpointing.save(state, str(directory), strategy, async_sharded_save=True))


def load_trainer_state(directory: Path, model: Sequence[GPTModel], optimizer: ChainedOptimizer) -> int:
    """Read a checkpoint written at any layout into this rank's shards; returns the weight version."""
    strategy = FullyParallelLoadStrategyWrapper(get_default_load_sharded_strategy(str(directory)), _dp_group())
    state = dist_checkpointing.load(_sharded_state(model, optimizer, 0, is_loading=True), str(directory), strategy)
    for chunk, chunk_state in zip(model, state["model"], strict=True):
        chunk.load_state_dict(chunk_state, strict=True)
    _load_optimizer(optimizer, state["optimizer"])
    return int(state["version"])


def _dp_group() -> torch.distributed.ProcessGroup:
    """The replicas that split a checkpoint's writes and reads."""
    return parallel_state.get_data_parallel_group(with_context_parallel=True)


def _sharded_state(
    model: Sequence[GPTModel], optimizer: ChainedOptimizer, version: int, is_loading: bool
) -> ShardedStateDict:
    # One entry per chunk; shards are keyed by global layer, so any TP x PP x VPP x DP reads them.
    model_state = [chunk.sharded_state_dict() for chunk in model]
    optimizer_state = optimizer.sharded_state_dict(model_state, is_loading=is_loading, metadata=_FORMAT)
    return {"model": model_state, "optimizer": optimizer_state, "version": version}


@torch.no_grad()
def _load_optimizer(optimizer: ChainedOptimizer, state: dict) -> None:
    """megatron's load, with torch Adam's per-parameter `step` kept out of the parameter-state copy."""
    (opt,) = optimizer.chained_optimizers  # a dense model: one DistributedOptimizer, saved unprefixed
    param_state = state.pop("param_state")
    opt.load_state_dict(state)  # param groups and hyper-parameters; the saved step, shared
    steps = {param: s.pop("step") for param, s in opt.optimizer.state.items()}
    opt.load_parameter_state_from_fully_reshardable(param_state)
    for param, step in steps.items():
        opt.optimizer.state[param]["step"] = step.clone()
