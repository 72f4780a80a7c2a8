"""Weight sync: trainer weights reach rollout engines as HF-named full tensors, bucket by bucket."""

from __future__ import annotations

import time

from erl_mega.rollout.engine import RolloutEngine
from erl_mega.train.trainer import Trainer


class InProcessWeightSync:
    """The embedded placement: trainer and engine share a process, buckets are copied in place.

    The bucket stream is the same one the SGLang backends consume (by CUDA IPC handles when colocated,
    NCCL broadcast when disaggregated), so the conversion path is exercised end to end here.
    """

    def push(self, trainer: Trainer, engines: list[RolloutEngine]) -> dict[str, float]:
        """Send the trainer's current weights to every engine; returns bytes and seconds.

        Every trainer rank calls it (the bucket stream is a collective); ranks without an engine
        take part in the gathers and drop the buckets.
        """
        start, sent = time.perf_counter(), 0
        if not engines:
            for _ in trainer.named_parameters_hf():
                pass
        for engine in engines:
            counted = _counting(trainer.named_parameters_hf())
            engine.update_weights(counted, trainer.version)
            sent += counted.bytes
        return {"sync_bytes": float(sent), "sync_seconds": time.perf_counter() - start}


class _counting:
    """Iterates buckets while counting the bytes that pass."""

    def __init__(self, buckets) -> None:
        self.buckets, self.bytes = buckets, 0

    def __iter__(self):
        for bucket in self.buckets:
            self.bytes += sum(t.numel() * t.element_size() for _, t in bucket)
            yield bucket
