"""Weight transports: the trainer's HF-named bucket stream into rollout servers, one interface, four wires.

`tensor`: flattened per-dtype buckets whose buffers are shared memory (CPU) or CUDA IPC (GPU), sent as
handles to `/update_weights_from_tensor`; `broadcast`: an NCCL (GPU) or gloo (CPU) group joined through
`/init_weights_update_group`; `disk`: safetensors read by `/update_weights_from_disk`. A bucket's buffer
is dropped only after every server acknowledged it, and a fresh one is made per bucket, so none is reused early.
"""

from __future__ import annotations

import datetime
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterable, Protocol

import torch
import torch.multiprocessing
from safetensors.torch import save_file

from erl_mega.weights.buckets import NamedTensors
from erl_mega.weights.flat import DEFAULT_BUCKET_BYTES, rebucket, serialize


class Endpoint(Protocol):
    """What a transport needs of a server: JSON POSTs (ServerClient is one)."""

    url: str
    incarnation: int  # bumped when the server's process is restarted: a fresh process has joined no group

    def post(self, path: str, body: dict | None = None, timeout: float | None = None) -> dict: ...


def _all(servers: list[Endpoint], path: str, body: dict) -> None:
    """POST the same body to every server at once; raises the first failure."""
    with ThreadPoolExecutor(max(1, len(servers))) as pool:
        for future in [pool.submit(s.post, path, body) for s in servers]:
            future.result()


class TensorTransport:
    """Shared-memory / CUDA IPC handles of flattened buckets (SGLang's `flattened_bucket` load format)."""

    def __init__(self, bucket_bytes: int = DEFAULT_BUCKET_BYTES) -> None:
        self.bucket_bytes = bucket_bytes
        # "file_system": a CPU handle names a /dev/shm file any process can open, not an fd passed over a socket
        torch.multiprocessing.set_sharing_strategy("file_system")

    def push(self, stream: Iterable[NamedTensors], version: int, servers: list[Endpoint]) -> dict[str, float]:
        sent, start = 0, time.perf_counter()
        for bucket in rebucket(stream, self.bucket_bytes, shared=True):  # CPU buffers born in shared memory
            body = {"serialized_named_tensors": [serialize(bucket)], "load_format": "flattened_bucket",
                    "flush_cache": True, "weight_version": str(version)}
            _all(servers, "/update_weights_from_tensor", body)  # returns once every server acked this buffer
            sent += bucket.nbytes
            del bucket, body
        return {"sync_bytes": float(sent), "sync_seconds": time.perf_counter() - start}


class BroadcastTransport:
    """Rank 0 (this process) broadcasts each tensor to servers at ranks 1..N of its own group (gloo or NCCL)."""

    def __init__(self, backend: str = "gloo", master_port: int | None = None, group_name: str = "erl_mega_weights") -> None:
        self.backend, self.base_name = backend, group_name
        self.group_name, self.master_port = group_name, master_port
        self._group = None
        self._members: tuple[tuple[str, int], ...] = ()
        self._generation = 0

    def _connect(self, servers: list[Endpoint]) -> None:
        """A group of this process and `servers`; a changed membership (a server restarted, added or gone)
        gets a new group under a new name and port, since the survivors still hold the old one."""
        from erl_mega.rollout.server.process import free_port

        if self._group is not None:
            self._generation += 1
            self.group_name, self.master_port = f"{self.base_name}-{self._generation}", free_port()
        elif self.master_port is None:
            self.master_port = free_port()
        world = len(servers) + 1
        timeout = datetime.timedelta(seconds=120)
        store = torch.distributed.TCPStore("127.0.0.1", self.master_port, world, True, timeout=timeout, wait_for_workers=False)
        with ThreadPoolExecutor(len(servers)) as pool:
            joins = [pool.submit(s.post, "/init_weights_update_group",
                                 {"master_address": "127.0.0.1", "master_port": self.master_port, "rank_offset": i + 1,
                                  "world_size": world, "group_name": self.group_name, "backend": self.backend})
                     for i, s in enumerate(servers)]
            group_cls = torch.distributed.ProcessGroupGloo if self.backend == "gloo" else torch.distributed.ProcessGroupNCCL
            self._group = group_cls(torch.distributed.PrefixStore(self.group_name, store), 0, world, timeout)
            for join in joins:
                join.result()
        self._store = store  # the store must outlive the group
        self._members = tuple((s.url, s.incarnation) for s in servers)

    def push(self, stream: Iterable[NamedTensors], version: int, servers: list[Endpoint]) -> dict[str, float]:
        if tuple((s.url, s.incarnation) for s in servers) != self._members:
            self._connect(servers)
        sent, start = 0, time.perf_counter()
        for bucket in stream:
            body = {"names": [n for n, _ in bucket], "dtypes": [str(t.dtype).removeprefix("torch.") for _, t in bucket],
                    "shapes": [list(t.shape) for _, t in bucket], "group_name": self.group_name,
                    "flush_cache": True, "weight_version": str(version)}
            with ThreadPoolExecutor(len(servers)) as pool:
                acks = [pool.submit(s.post, "/update_weights_from_distributed", body) for s in servers]
                for _, tensor in bucket:
                    wire = tensor.detach().contiguous() if self.backend == "nccl" else tensor.detach().cpu().contiguous()
                    self._group.broadcast(wire, 0).wait()
                    sent += wire.numel() * wire.element_size()
                for ack in acks:
                    ack.result()
        return {"sync_bytes": float(sent), "sync_seconds": time.perf_counter() - start}


class DiskTransport:
    """Safetensors in a directory the servers can read, then `/update_weights_from_disk`."""

    def __init__(self, directory: str | None = None) -> None:
        self.directory = Path(directory or tempfile.mkdtemp(prefix="erl_mega_weights_"))

    def push(self, stream: Iterable[NamedTensors], version: int, servers: list[Endpoint]) -> dict[str, float]:
        start = time.perf_counter()
        target = self.directory / f"v{version}"
        target.mkdir(parents=True, exist_ok=True)
        sent = 0
        for i, bucket in enumerate(stream):
            tensors = {n: t.detach().cpu().contiguous() for n, t in bucket}
            save_file(tensors, target / f"bucket-{i:05d}.safetensors")
            sent += sum(t.numel() * t.element_size() for t in tensors.values())
        _all(servers, "/update_weights_from_disk", {"model_path": str(target), "weight_version": str(version)})
        return {"sync_bytes": float(sent), "sync_seconds": time.perf_counter() - start}
