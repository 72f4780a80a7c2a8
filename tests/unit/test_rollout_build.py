"""The rollout side's hand-overs: colocated memory release / resume around the push, generation paused
only for a disaggregated push, and the transport each placement or override picks."""

from __future__ import annotations

import pytest
import torch

from erl_mega.rollout.build import HostTensorTransport, LatestOnDisk, Rollout, make_transport
from erl_mega.rollout.client import ServerClient
from erl_mega.weights.transport import BroadcastTransport


class Recording(ServerClient):
    """A server client that records what the run asks of it instead of sending it."""

    def __init__(self, calls: list) -> None:
        super().__init__("http://127.0.0.1:9", transport=None)
        self.calls = calls

    def post(self, path, body=None, timeout=None):
        self.calls.append((path, tuple((body or {}).get("tags", ()))))
        return {}

    def update_weights(self, buckets, version):
        for _ in buckets:
            pass
        self.calls.append(("update_weights", version))


class Trainer:
    version = 3

    def named_parameters_hf(self):
        yield [("w", torch.ones(2))]


def test_colocated_hand_over_keeps_peaks_apart():
    calls = []
    rollout = Rollout(Recording(calls), colocated=True)
    rollout.release()
    metrics = rollout.push(Trainer())
    assert calls == [("/release_memory_occupation", ("weights", "kv_cache")), ("/resume_memory_occupation", ("weights",)),
                     ("update_weights", 3), ("/resume_memory_occupation", ("kv_cache",))]
    assert metrics["sync_bytes"] == 8


def test_disaggregated_push_pauses_generation_only_for_the_push():
    calls = []
    rollout = Rollout(Recording(calls), colocated=False)
    rollout.release()  # nothing to release: the servers have devices of their own
    rollout.push(Trainer())
    assert calls == [("/pause_generation", ()), ("update_weights", 3), ("/continue_generation", ())]


def test_transport_per_placement_and_override(tmp_path):
    assert isinstance(make_transport("shm", tmp_path), HostTensorTransport)
    broadcast = make_transport("broadcast", tmp_path)
    assert isinstance(broadcast, BroadcastTransport) and broadcast.backend == ("nccl" if torch.cuda.is_available() else "gloo")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="cuda_ipc needs CUDA"):
            make_transport("cuda_ipc", tmp_path)


def test_disk_keeps_only_the_newest_version(tmp_path):
    disk = make_transport("disk", tmp_path)
    assert isinstance(disk, LatestOnDisk)
    server = Recording([])
    for version in (1, 2):
        disk.push([[("w", torch.ones(2) * version)]], version, [server])
    assert sorted(p.name for p in disk.directory.iterdir()) == ["v2"]
