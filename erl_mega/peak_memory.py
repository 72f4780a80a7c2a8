"""Peak memory per phase of a step (rollout, train, push): shows that colocated rollout and training hand
memory over instead of stacking their peaks.

CPU: the resident-set high-water mark (VmHWM) of this process and, summed, of the rollout servers, each
reset when a phase starts (writing 5 to /proc/<pid>/clear_refs). CUDA: this process's max_memory_allocated.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import torch


class PhaseMemory:
    """`with memory.phase("train", metrics):` adds `mem_train_*_mb` peaks to `metrics`."""

    def __init__(self, server_pids: Callable[[], list[int]] = list) -> None:
        self.server_pids = server_pids

    @contextmanager
    def phase(self, name: str, metrics: dict[str, float]) -> Iterator[None]:
        pids = self.server_pids()
        for pid in ["self", *pids]:
            _reset_peak(pid)
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        yield
        own = _peak_mb("self")
        if own is not None:
            metrics[f"mem_{name}_trainer_mb"] = own
        servers = [mb for mb in map(_peak_mb, pids) if mb is not None]
        if servers:
            metrics[f"mem_{name}_rollout_mb"] = sum(servers)
        if torch.cuda.is_available():
            metrics[f"mem_{name}_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20


def _reset_peak(pid: int | str) -> None:
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:  # not Linux, or the process is gone: that phase reports no peak for it
        pass


def _peak_mb(pid: int | str) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None
