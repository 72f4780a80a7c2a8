"""The run's rollout side from `rollout.*`: the engine, the weight push that feeds it, the processes it owns.

    rollout=local    the in-process engine; weights copied in place
    rollout=server   `erl-mega serve` processes (rollout.num_servers) behind the router
    rollout=sglang   `python -m sglang.launch_server` per rollout.tp_size GPUs, or running servers by rollout.urls

Servers we start are ended by pid in `Rollout.close` (a `with` block ends them on error too). The
transport follows the placement (colocated: shared memory on CPU, CUDA IPC on GPU; disaggregated: a
gloo / NCCL broadcast) unless `rollout.transport` names one.
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

import torch

from erl_mega.config.schema import RunConfig
from erl_mega.rollout.client import ServerClient
from erl_mega.rollout.engine import RolloutEngine
from erl_mega.rollout.router import Router
from erl_mega.rollout.server.process import ServerProcess, free_port
from erl_mega.weights.buckets import NamedTensors
from erl_mega.weights.sync import InProcessWeightSync
from erl_mega.weights.transport import BroadcastTransport, DiskTransport, TensorTransport

PLACEMENT_TRANSPORT = {"colocated": "shm", "disaggregated": "broadcast"}  # colocated on CUDA: cuda_ipc


@dataclass
class Rollout:
    """The engine the workflow samples from, how trainer weights reach it, and the server processes we own."""

    engine: RolloutEngine
    colocated: bool  # shares the trainer's devices: its memory is released during the train step
    processes: list[ServerProcess] = field(default_factory=list)
    sync: InProcessWeightSync = field(default_factory=InProcessWeightSync)

    @property
    def servers(self) -> list[ServerClient]:
        """The server clients (empty for the in-process engine)."""
        if isinstance(self.engine, Router):
            return self.engine.clients
        return [self.engine] if isinstance(self.engine, ServerClient) else []

    def pids(self) -> list[int]:
        return [p.pid for p in self.processes if p.alive()]

    def release(self) -> None:
        """Before the train step, colocated: free the rollout memory (weights and KV cache) for the trainer."""
        if not self.colocated:
            return
        if self.servers:
            self.engine.release_memory(("weights", "kv_cache"))
        else:
            self.engine.release_memory()

    def push(self, trainer) -> dict[str, float]:
        """The trainer's new weights into the engine (every trainer rank calls it: the bucket stream is a collective).

        Colocated: weights back first, the push, then the KV cache, so their peaks never overlap. Apart:
        generation pauses (requests wait in place) only for the push, so no request mixes two versions.
        """
        if not self.servers:  # in-process: the KV cache lives only inside generate
            if self.colocated:
                self.engine.resume_memory()
            return self.sync.push(trainer, [self.engine])
        if self.colocated:
            self.engine.resume_memory(("weights",))
            metrics = self.sync.push(trainer, [self.engine])
            self.engine.resume_memory(("kv_cache",))
            return metrics
        for client in self.servers:
            client.post("/pause_generation", {"mode": "in_place"})
        try:
            return self.sync.push(trainer, [self.engine])
        finally:
            for client in self.servers:
                client.post("/continue_generation")

    def close(self) -> None:
        """End the servers we started, by pid."""
        for process in self.processes:
            process.stop()

    def __enter__(self) -> "Rollout":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def build_rollout(cfg: RunConfig, policy_dir: Path, pad_token_id: int, out_dir: Path) -> Rollout:
    """The configured rollout side on `policy_dir`; servers are started and healthy when this returns."""
    r = cfg.rollout
    if r.backend == "local":
        from transformers import AutoModelForCausalLM

        from erl_mega.rollout.local import LocalEngine

        hf_model = AutoModelForCausalLM.from_pretrained(policy_dir, dtype=_dtype(cfg))
        return Rollout(LocalEngine(hf_model, pad_token_id, r.max_batch_size), colocated=True)
    colocated, cuda = r.placement == "colocated", torch.cuda.is_available()
    transport = make_transport(r.transport or ("cuda_ipc" if colocated and cuda else PLACEMENT_TRANSPORT[r.placement]),
                               out_dir)
    if r.urls:  # attached: one server needs no router
        clients = [ServerClient(url, transport=transport) for url in r.urls]
        sick = [c.url for c in clients if not c.health()]
        if sick:
            raise RuntimeError(f"rollout.urls: {sick[0]} does not answer /health")
        return Rollout(clients[0] if len(clients) == 1 else Router(clients, transport=transport), colocated)
    processes = _server_processes(cfg, policy_dir, pad_token_id, out_dir)
    try:
        for process in processes:
            process.start(wait=False)  # start together, then wait: loads overlap
        for process in processes:
            process.wait_healthy()
    except BaseException:
        for process in processes:
            process.stop()
        raise
    router = Router([ServerClient(p.url) for p in processes], processes, transport=transport)
    return Rollout(router, colocated, processes)


def _server_processes(cfg: RunConfig, policy_dir: Path, pad_token_id: int, out_dir: Path) -> list[ServerProcess]:
    r, cuda = cfg.rollout, torch.cuda.is_available()
    logs = [out_dir / f"rollout_server{i}.log" for i in range(r.num_servers)]
    if r.backend == "server":
        return [ServerProcess.embedded(str(policy_dir), log_path=log, max_batch_size=r.max_batch_size,
                                       dtype=cfg.model.dtype, pad_token_id=pad_token_id, device="cuda" if cuda else "cpu")
                for log in logs]
    if importlib.util.find_spec("sglang") is None:
        raise RuntimeError("rollout=sglang launches `python -m sglang.launch_server`, but sglang is not installed here "
                           "(it needs CUDA; see the README); attach running servers with rollout.urls=[http://host:port]")
    processes = []
    for i, log in enumerate(logs):
        port = r.port + i
        command = [sys.executable, "-m", "sglang.launch_server", "--model-path", str(policy_dir), "--host", r.host,
                   "--port", str(port), "--tp-size", str(r.tp_size), "--base-gpu-id", str(i * r.tp_size),
                   "--mem-fraction-static", str(r.mem_fraction), "--dtype", cfg.model.dtype, "--skip-tokenizer-init",
                   "--enable-memory-saver", "--weight-version", "0"]
        process = ServerProcess(command, port, log, r.startup_timeout)
        if r.host not in ("0.0.0.0", "127.0.0.1", "localhost"):
            process.url = f"http://{r.host}:{port}"
        processes.append(process)
    return processes


def make_transport(name: str, out_dir: Path):
    """The weight transport `name` (rollout.transport) for this machine."""
    cuda = torch.cuda.is_available()
    if name == "cuda_ipc" and not cuda:
        raise RuntimeError("rollout.transport=cuda_ipc needs CUDA; on CPU use shm (the same endpoint, host memory)")
    if name == "broadcast":
        return BroadcastTransport("nccl" if cuda else "gloo", master_port=free_port())
    if name == "disk":
        return LatestOnDisk(out_dir / "weights_push")
    return TensorTransport() if name == "cuda_ipc" else HostTensorTransport()


class HostTensorTransport(TensorTransport):
    """Shared memory even when the trainer's tensors sit on a GPU (rollout.transport=shm)."""

    def push(self, stream: Iterable[NamedTensors], version: int, servers) -> dict[str, float]:
        return super().push(_on_host(stream), version, servers)


class LatestOnDisk(DiskTransport):
    """Safetensors per version, keeping only the newest on disk (a run pushes once per step)."""

    def push(self, stream: Iterable[NamedTensors], version: int, servers) -> dict[str, float]:
        metrics = super().push(stream, version, servers)
        for old in self.directory.glob("v*"):
            if old.name != f"v{version}":
                shutil.rmtree(old, ignore_errors=True)
        return metrics


def _on_host(stream: Iterable[NamedTensors]) -> Iterator[NamedTensors]:
    for bucket in stream:
        yield [(name, tensor.detach().cpu()) for name, tensor in bucket]


def _dtype(cfg: RunConfig) -> torch.dtype:
    return torch.float32 if cfg.model.dtype == "float32" else torch.bfloat16
