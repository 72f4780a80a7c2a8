"""Asynchronous ERL (`trainer.async_steps=k`): rollout of the next steps overlaps training of this one.

A producer thread collects the batches of steps start+1, start+2, ... in order through the rollout
servers, while the trainer trains. The batch of step s is started only once the weights of step s-1-k
are pushed, so when the trainer (at version v = s-1) takes it, every row is of version >= v - k; a row
older than that is rejected all the same (`fresh_rows`). A task's attempt 1, reflection and attempt 2
each carry the version that produced them (a push may land between them), and the reflection memory
is updated by the producer alone, task by task, step by step. Before a checkpointed step's successor
is started the producer waits for the checkpoint, and it collects nothing past the step that spends
`env_step_budget` (the run's last checkpoint), so a checkpoint never has a batch in flight and a
resumed run continues with the next step's tasks: none lost, none repeated.
"""

from __future__ import annotations

import queue
import threading
import time
from typing import Callable

import torch

from erl_mega.train.batch import TrainBatch
from erl_mega.train.micro_batches import select_rows

Collect = Callable[[int], tuple[TrainBatch, dict[str, float]]]


class AsyncCollector:
    """Produces steps' batches ahead of the trainer, within `async_steps` weight versions of it."""

    def __init__(self, collect: Collect, start: int, steps: int, async_steps: int, checkpoint_every: int,
                 env_steps: int = 0, env_step_budget: int = 0) -> None:
        self.collect, self.async_steps, self.checkpoint_every = collect, async_steps, checkpoint_every
        self._done = start  # the last step whose weights were pushed (and checkpoint written, where due)
        # the run stops (and checkpoints) after the step that reaches the budget: nothing is collected past it
        self._env_steps, self._budget = env_steps, env_step_budget
        self._cond = threading.Condition()
        self._ready: queue.Queue = queue.Queue()
        self._stopped = False
        self._thread = threading.Thread(target=self._produce, args=(start, steps), name="rollout-producer", daemon=True)
        self._thread.start()

    def _allowed(self, step: int) -> bool:
        """Whether step's batch may start: weights of step - 1 - k pushed, and step - 1's checkpoint written."""
        previous = step - 1
        checkpointed = self.checkpoint_every and previous % self.checkpoint_every == 0
        return self._done >= (previous if checkpointed else previous - self.async_steps)

    def _produce(self, start: int, steps: int) -> None:
        try:
            for step in range(start + 1, steps + 1):
                with self._cond:
                    self._cond.wait_for(lambda: self._stopped or self._allowed(step))
                    if self._stopped:
                        return
                batch, metrics = self.collect(step)
                self._ready.put((step, batch, metrics))
                self._env_steps += int(metrics.get("env_steps", 0))
                if self._budget and self._env_steps >= self._budget:
                    return
        except BaseException as err:  # handed to the trainer, which raises it
            self._ready.put((None, err, None))

    def take(self, step: int, version: int) -> tuple[TrainBatch, dict[str, float]]:
        """Step's batch for a trainer at weight version `version`, rows older than `version - k` dropped."""
        clock = time.perf_counter()
        produced, batch, metrics = self._ready.get()
        if produced is None:
            raise RuntimeError("the rollout producer failed") from batch
        if produced != step:
            raise RuntimeError(f"the rollout producer made step {produced}'s batch where step {step}'s was due")
        batch, stale = fresh_rows(batch, version, self.async_steps)
        return batch, metrics | stale | {"time_wait_rollout": time.perf_counter() - clock}

    def done(self, step: int) -> None:
        """Step's weights are pushed (and its checkpoint written, if due): later batches may start."""
        with self._cond:
            self._done = step
            self._cond.notify_all()

    def close(self) -> None:
        """Stop producing; waits for a collection in progress (its servers must outlive it)."""
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
        self._thread.join()


def fresh_rows(batch: TrainBatch, version: int, async_steps: int) -> tuple[TrainBatch, dict[str, float]]:
    """Rows of weight version >= version - async_steps, and the batch's staleness (version - row version)."""
    staleness = torch.tensor([version - v for v in batch.versions], dtype=torch.float32)
    keep = (staleness <= async_steps).nonzero().flatten()
    metrics = {"staleness_mean": float(staleness.mean()), "staleness_max": float(staleness.max()),
               "rows_rejected_stale": float(batch.num_rows - keep.numel())}
    if keep.numel() == 0:
        raise RuntimeError(f"every row is older than weight version {version} - {async_steps}")
    if keep.numel() < batch.num_rows:
        batch = select_rows(batch, keep)
    return batch, metrics
