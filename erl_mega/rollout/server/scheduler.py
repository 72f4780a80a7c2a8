"""The server's batching loop: concurrent HTTP requests join one continuously batched decode on a worker thread."""

from __future__ import annotations

import threading
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Callable, TypeVar

from erl_mega.rollout.batcher import Finished, RunningBatch
from erl_mega.rollout.engine import GenerationRequest
from erl_mega.rollout.local import LocalEngine

T = TypeVar("T")


class Aborted(Exception):
    """The request was aborted (by `/abort_request` or a pause in abort mode) before it finished."""


@dataclass(eq=False)
class _Pending:
    rid: str
    request: GenerationRequest
    future: Future  # resolves to a batcher.Finished


class Scheduler:
    """Owns the engine: one worker thread steps a continuous batch; weight updates and memory moves run between.

    Requests that arrive while others decode join at the next step (up to `engine.max_batch_size` live
    rows) and leave the step they finish. `exclusive` stops admission, lets the live rows finish, then
    runs its function with nothing in flight, so every completion comes from one weight version.
    """

    def __init__(self, engine: LocalEngine, continuous: bool = True) -> None:
        self.engine = engine
        self.continuous = continuous  # False: request-level batching, a batch admits only once it is empty
        self.weight_version = str(engine.weight_version)
        self._queue: deque[_Pending] = deque()
        self._cond = threading.Condition()
        self._paused = False
        self._draining = 0  # exclusive callers waiting for the live rows to finish
        self._live = 0  # rows in the batch or being admitted to it
        self._aborted: set[str | None] = set()  # rids to drop from the batch at the next step; None: all
        self._lock = threading.Lock()  # held by a step of the batch or an exclusive function
        self._stopped = False
        self.stats = {"requests": 0, "decode_steps": 0, "prefills": 0, "prompt_tokens": 0, "completion_tokens": 0,
                      "cached_tokens": 0}
        self._worker = threading.Thread(target=self._loop, name="scheduler", daemon=True)
        self._worker.start()

    def submit(self, rid: str, request: GenerationRequest) -> Future:
        """Queue one request; the future resolves to its `Finished` (or raises Aborted / ValueError)."""
        future: Future = Future()
        with self._cond:
            self._queue.append(_Pending(rid, request, future))
            self._cond.notify_all()
        return future

    def abort(self, rid: str | None) -> int:
        """Abort requests with this id (all when None), waiting or decoding; returns how many were waiting."""
        with self._cond:
            hit = [p for p in self._queue if rid is None or p.rid == rid]
            for p in hit:
                self._queue.remove(p)
                p.future.set_exception(Aborted(p.rid))
            if self._live:
                self._aborted.add(rid)
        return len(hit)

    def pause(self) -> None:
        """Stop admitting requests (live rows finish); waiting requests stay queued."""
        with self._cond:
            self._paused = True

    def resume(self) -> None:
        with self._cond:
            self._paused = False
            self._cond.notify_all()

    @property
    def paused(self) -> bool:
        return self._paused

    def exclusive(self, fn: Callable[[], T]) -> T:
        """Run `fn` with no generation in flight (weight updates, memory release), after the live rows finish."""
        with self._cond:
            self._draining += 1
            while self._live:
                self._cond.wait()
        try:
            with self._lock:
                return fn()
        finally:
            with self._cond:
                self._draining -= 1
                self._cond.notify_all()

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()

    def _take(self, live: int) -> tuple[list[_Pending], set[str | None]]:
        """Wait for work; then the requests to admit now and the rids to abort in the batch."""
        with self._cond:
            while not self._stopped and not live and not self._admitting():
                self._cond.wait()
            room = self.engine.max_batch_size - live if self._admitting() and (self.continuous or not live) else 0
            joining = [self._queue.popleft() for _ in range(min(room, len(self._queue)))]
            aborted, self._aborted = self._aborted, set()
            self._live = live + len(joining)
            return joining, aborted

    def _admitting(self) -> bool:
        return not (self._paused or self._draining) and bool(self._queue)

    def _loop(self) -> None:
        batch = self.engine.open_batch()
        while not self._stopped:
            joining, aborted = self._take(len(batch))
            with self._lock:
                if not batch.rows:
                    batch = self.engine.open_batch()  # a fresh batch reads the current weight version
                self._drop(batch, aborted)
                self._admit(batch, joining)
                finished = self._step(batch)
            with self._cond:
                self._live = len(batch)
                self._cond.notify_all()
            for done in finished:
                self._record(done)

    def _step(self, batch: RunningBatch) -> list[Finished]:
        if not batch.rows:
            return []
        self.stats["decode_steps"] += 1
        try:
            return batch.step()
        except Exception as err:  # a failing step fails its rows, never the server
            for row in batch.drop({r.key for r in batch.rows}):
                row.key.future.set_exception(err)
            return []

    def _admit(self, batch: RunningBatch, joining: list[_Pending]) -> None:
        if not joining:
            return
        try:
            batch.admit([(p, p.request, self.engine.draws(p.request)) for p in joining])
            self.stats["prefills"] += 1
        except Exception as err:  # e.g. out of memory in the prefill: those requests fail, the batch goes on
            for p in joining:
                p.future.set_exception(err)

    def _drop(self, batch: RunningBatch, aborted: set[str | None]) -> None:
        if aborted:
            for row in batch.drop({r.key for r in batch.rows if None in aborted or r.key.rid in aborted}):
                row.key.future.set_exception(Aborted(row.key.rid))

    def _record(self, done: Finished) -> None:
        pending: _Pending = done.key
        self.stats["requests"] += 1
        self.stats["prompt_tokens"] += len(pending.request.prompt_ids)
        self.stats["completion_tokens"] += len(done.completion.token_ids)
        self.stats["cached_tokens"] += done.cached_tokens
        pending.future.set_result(done)
