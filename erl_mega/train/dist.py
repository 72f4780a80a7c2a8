"""torch.distributed and megatron-core parallel state: one call sets them up, one tears them down."""

from __future__ import annotations

import os
from contextlib import ExitStack

import torch
import torch.distributed as dist
from megatron.core import parallel_state
from megatron.core.tensor_parallel import model_parallel_cuda_manual_seed

from erl_mega.train import cpu_compat

_TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
_HOST = ExitStack()  # holds cpu_compat.host_devices() while megatron's parallel state lives on the host


def init_parallel(tp: int = 1, pp: int = 1, seed: int = 0, vpp: int = 1) -> None:
    """Join (or create) the process group, build megatron's TP/PP/DP groups and seed every RNG.

    Under torchrun the group comes from its env vars; otherwise it is a single local process.
    A repeated call with the same tp/pp keeps the groups, sets `vpp` (virtual pipeline stages
    form no group of their own) and reseeds.
    """
    for name, size in (("tp", tp), ("pp", pp), ("vpp", vpp)):
        if size < 1:
            raise ValueError(f"{name}={size}; must be >= 1")
    if not dist.is_initialized():
        _init_process_group()
    world_size = dist.get_world_size()
    if world_size % (tp * pp) != 0:
        raise ValueError(f"tp * pp = {tp * pp} must divide the world size {world_size}")
    if parallel_state.model_parallel_is_initialized():
        current = (
            parallel_state.get_tensor_model_parallel_world_size(),
            parallel_state.get_pipeline_model_parallel_world_size(),
        )
        if current != (tp, pp):
            raise ValueError(
                f"parallel state already has (tp, pp) = {current}, asked for ({tp}, {pp}); "
                "call destroy_parallel() first"
            )
    else:
        if cpu_compat.on_host():
            _HOST.enter_context(cpu_compat.host_devices())
        parallel_state.initialize_model_parallel(
            tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp
        )
    # megatron reads None as "no virtual stages"; its interleaved schedule runs when this is set.
    parallel_state.set_virtual_pipeline_model_parallel_world_size(vpp if vpp > 1 else None)
    _seed(seed)


def world_size() -> int:
    """Ranks in the job: the default group's size, else torchrun's WORLD_SIZE, else 1."""
    if dist.is_initialized():
        return dist.get_world_size()
    return int(os.environ.get("WORLD_SIZE", "1"))


def reset_parallel() -> None:
    """Tear down megatron's parallel state only: the process group stays, so a new layout can follow."""
    parallel_state.destroy_model_parallel()
    _HOST.close()


def destroy_parallel() -> None:
    """Tear down megatron's parallel state and the default process group (safe if neither exists)."""
    reset_parallel()
    if dist.is_initialized():
        dist.destroy_process_group()


def _init_process_group() -> None:
    """Init the default group: gloo on the host, nccl on CUDA (one device per local rank)."""
    backend = "gloo" if cpu_compat.on_host() else "nccl"
    if all(var in os.environ for var in _TORCHRUN_VARS):
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend, init_method="env://")
        return
    # Port 0: the OS picks a free port, so concurrent single-process runs never collide.
    store = dist.TCPStore("127.0.0.1", 0, world_size=1, is_master=True)
    dist.init_process_group(backend, store=store, rank=0, world_size=1)


def _seed(seed: int) -> None:
    """Seed torch and megatron's model-parallel RNG tracker."""
    if cpu_compat.on_host():
        cpu_compat.seed_host_rng(seed)
        return
    torch.manual_seed(seed)
    model_parallel_cuda_manual_seed(seed, force_reset_rng=True)


def is_leader() -> bool:
    """True on the one rank that drives rollouts, evaluation and run files (global rank 0)."""
    return not dist.is_initialized() or dist.get_rank() == 0


def barrier() -> None:
    """Wait for every rank (a no-op in a single process)."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def all_gather(obj: object) -> list:
    """Every rank's `obj`, in rank order, on every rank (pickled over the default group; `[obj]` in one process)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return [obj]
    out: list = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_from_leader(obj: object) -> object:
    """The leader's `obj` on every rank (pickled over the default group; the identity in one process)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
