"""The server's batching loop: concurrent HTTP requests are gathered into engine batches on one worker thread."""

from __future__ import annotations

import threading
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Callable, TypeVar

from erl_mega.rollout.engine import Completion, GenerationRequest
from erl_mega.rollout.local import LocalEngine

T = TypeVar("T")


class Aborted(Exception):
    """The request was aborted (by `/abort_request` or a pause in abort mode) before it ran."""


@dataclass
class _Pending:
    rid: str
    request: GenerationRequest
    future: Future


class Scheduler:
    """Owns the engine: one worker thread runs batches; weight updates and memory moves run between them.

    Requests that arrive while a batch runs wait for the next one (request-level batching); a batch
    takes up to `engine.max_batch_size` waiting requests.
    """

    def __init__(self, engine: LocalEngine) -> None:
        self.engine = engine
        self.weight_version = str(engine.weight_version)
        self._queue: deque[_Pending] = deque()
        self._cond = threading.Condition()
        self._paused = False
        self._exclusive = threading.Lock()  # held by a running batch or an update
        self._stopped = False
        self.stats = {"requests": 0, "batches": 0, "prompt_tokens": 0, "completion_tokens": 0}
        self._worker = threading.Thread(target=self._loop, name="scheduler", daemon=True)
        self._worker.start()

    def submit(self, rid: str, request: GenerationRequest) -> Future:
        """Queue one request; the future resolves to its Completion (or raises Aborted / ValueError)."""
        future: Future = Future()
        with self._cond:
            self._queue.append(_Pending(rid, request, future))
            self._cond.notify()
        return future

    def abort(self, rid: str | None) -> int:
        """Abort waiting requests with this id (all when None); returns how many were aborted."""
        with self._cond:
            hit = [p for p in self._queue if rid is None or p.rid == rid]
            for p in hit:
                self._queue.remove(p)
                p.future.set_exception(Aborted(p.rid))
        return len(hit)

    def pause(self) -> None:
        """Stop starting batches (the running one finishes); waiting requests stay queued."""
        with self._cond:
            self._paused = True

    def resume(self) -> None:
        with self._cond:
            self._paused = False
            self._cond.notify()

    @property
    def paused(self) -> bool:
        return self._paused

    def exclusive(self, fn: Callable[[], T]) -> T:
        """Run `fn` between batches, with no generation in flight (weight updates, memory release)."""
        with self._exclusive:
            return fn()

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify()

    def _next_batch(self) -> list[_Pending]:
        with self._cond:
            while not self._stopped and (self._paused or not self._queue):
                self._cond.wait()
            size = min(len(self._queue), self.engine.max_batch_size)
            return [self._queue.popleft() for _ in range(size)]

    def _loop(self) -> None:
        while not self._stopped:
            batch = self._next_batch()
            if not batch:
                continue
            with self._exclusive:
                try:
                    outs = self.engine.generate([p.request for p in batch])
                except Exception as err:  # a bad batch fails its requests, never the server
                    for p in batch:
                        p.future.set_exception(err)
                    continue
            self._record(batch, outs)

    def _record(self, batch: list[_Pending], outs: list[Completion]) -> None:
        self.stats["requests"] += len(batch)
        self.stats["batches"] += 1
        for p, out in zip(batch, outs):
            self.stats["prompt_tokens"] += len(p.request.prompt_ids)
            self.stats["completion_tokens"] += len(out.token_ids)
            p.future.set_result(out)
