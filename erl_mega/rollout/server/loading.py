"""How weights reach the served engine: tensor payloads (shm / CUDA IPC), a broadcast group, or disk."""

from __future__ import annotations

import datetime
from pathlib import Path

import torch
from safetensors.torch import load_file

from erl_mega.rollout.local import LocalEngine
from erl_mega.rollout.server.protocol import (
    InitWeightsUpdateGroupReqInput,
    UpdateWeightsFromDiskReqInput,
    UpdateWeightsFromDistributedReqInput,
    UpdateWeightsFromTensorReqInput,
)
from erl_mega.weights.flat import deserialize

_BACKENDS = {"gloo": torch.distributed.ProcessGroupGloo}
if torch.distributed.is_nccl_available():
    _BACKENDS["nccl"] = torch.distributed.ProcessGroupNCCL
GROUP_TIMEOUT = datetime.timedelta(seconds=120)


def parse_dtype(name: str, field: str) -> torch.dtype:
    """'bfloat16' or 'torch.bfloat16' to the torch dtype; ValueError naming `field` otherwise."""
    dtype = getattr(torch, name.removeprefix("torch."), None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"{field}: {name!r} is not a torch dtype")
    return dtype


class WeightLoader:
    """Applies SGLang weight-update requests to a LocalEngine; callers hold the scheduler's exclusive lock."""

    def __init__(self, engine: LocalEngine) -> None:
        self.engine = engine
        self.groups: dict[str, tuple[torch.distributed.ProcessGroup, int]] = {}

    def from_tensor(self, body: UpdateWeightsFromTensorReqInput, version: int) -> None:
        if body.load_format != "flattened_bucket":
            raise ValueError(f"load_format={body.load_format!r}; this server takes 'flattened_bucket'")
        if len(body.serialized_named_tensors) != 1:
            raise ValueError(f"serialized_named_tensors: {len(body.serialized_named_tensors)} entries; TP=1 takes 1")
        bucket = deserialize(body.serialized_named_tensors[0])
        self.engine.update_weights([bucket.named_tensors()], version)

    def init_group(self, body: InitWeightsUpdateGroupReqInput, rank: int) -> None:
        """Join the trainer's group (rank 0 hosts the TCP store); blocks until every rank has joined."""
        if body.backend not in _BACKENDS:
            raise ValueError(f"backend={body.backend!r}; choose one of {sorted(_BACKENDS)}")
        if body.group_name in self.groups:
            raise ValueError(f"group_name={body.group_name!r} already exists on this server")
        store = torch.distributed.TCPStore(body.master_address, body.master_port, body.world_size, False,
                                           timeout=GROUP_TIMEOUT)
        store = torch.distributed.PrefixStore(body.group_name, store)
        self.groups[body.group_name] = (_BACKENDS[body.backend](store, rank, body.world_size, GROUP_TIMEOUT), rank)

    def from_distributed(self, body: UpdateWeightsFromDistributedReqInput, version: int) -> None:
        if body.group_name not in self.groups:
            raise ValueError(f"group_name={body.group_name!r}: call /init_weights_update_group first")
        if not len(body.names) == len(body.dtypes) == len(body.shapes):
            raise ValueError("names, dtypes and shapes must have the same length")
        group, _ = self.groups[body.group_name]
        device = self.engine._device if type(group) is _BACKENDS.get("nccl") else torch.device("cpu")
        named = []
        for i, (name, dtype, shape) in enumerate(zip(body.names, body.dtypes, body.shapes)):
            tensor = torch.empty(shape, dtype=parse_dtype(dtype, f"dtypes[{i}]"), device=device)
            group.broadcast(tensor, 0).wait()
            named.append((name, tensor))
        self.engine.update_weights([named], version)

    def from_disk(self, body: UpdateWeightsFromDiskReqInput, version: int) -> None:
        files = sorted(Path(body.model_path).glob("*.safetensors"))
        if not files:
            raise ValueError(f"model_path={body.model_path!r} holds no *.safetensors files")
        self.engine.update_weights((list(load_file(f).items()) for f in files), version)
