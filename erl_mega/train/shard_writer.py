"""megatron-core's checkpoint shard writes, in worker processes that this run supervises.

megatron-core 0.16 writes each rank's shard files from forked workers and waits for them on a
JoinableQueue without a timeout: a worker that dies (the OOM killer's SIGKILL) hangs the run
forever. It also reports the results through a spawn-context `Manager`: a server process that
re-imports the caller's `__main__` (re-running a script that lacks a `__main__` guard), starts a
resource tracker, and outlives a `kill -9` of the run. Here megatron's own per-file write function
runs in forked workers that die with their parent (PR_SET_PDEATHSIG); the run waits on their pipes
and process sentinels, so a raise, an exit or a kill is one error within a second, and a worker
whose file stops growing for `STALL_S` seconds is hung: ended and reported. The results reach
megatron's finalisation through an in-process queue, so no Manager is ever started.
"""

from __future__ import annotations

import ctypes
import functools
import multiprocessing as mp
import os
import queue
import shutil
import signal
import sys
import time
from multiprocessing.connection import wait

import torch
from torch.distributed.checkpoint.api import CheckpointException
from megatron.core.dist_checkpointing.strategies import filesystem_async
from megatron.core.dist_checkpointing.strategies.async_utils import AsyncRequest

STALL_S = 300.0  # a shard file that has not grown for this long (fsync on a slow filesystem included) is a hang
_PR_SET_PDEATHSIG = 1
_Writer = filesystem_async.FileSystemWriterAsync


class ShardWriteError(RuntimeError):
    """A shard write failed; the message (one line) names the worker, its file and the cause."""


def use_in_process_results() -> None:
    """Give megatron's writer a plain queue for its results before it would start a spawn Manager."""
    if filesystem_async._results_queue is None:
        filesystem_async._results_queue = queue.Queue()


def execute(request: AsyncRequest) -> None:
    """Run `dist_checkpointing.save(..., async_sharded_save=True)`'s request now, as megatron's
    `execute_sync` does, with supervised writers (collective: every rank)."""
    cause = None
    if request.async_fn is not None:
        func = request.async_fn
        if not (isinstance(func, functools.partial) and func.func is _Writer.write_preloaded_data_multiproc):
            raise TypeError(f"unexpected megatron-core save function {func!r}: recheck shard_writer on upgrade")
        transform_list, _ = func.args
        _, buckets, results = request.async_fn_args
        if request.preload_fn is not None:
            buckets = request.preload_fn()
        outcome = write_buckets(transform_list, buckets)
        cause = str(outcome) if isinstance(outcome, Exception) else None
        results.put(outcome)  # megatron's finalisation gathers every rank's outcome and raises on all if any failed
    torch.distributed.barrier()
    try:
        for finalize in request.finalize_fns:
            finalize()
    except CheckpointException:  # torch's, a BaseException
        raise ShardWriteError(cause or "a shard write failed on another rank") from None


def write_buckets(transform_list: list, buckets: list) -> dict[int, list] | ShardWriteError:
    """Each bucket's file written by its own forked worker; the results by bucket, or the first failure."""
    ctx = mp.get_context("fork")  # the workers share the staged tensors without copying or re-importing anything
    workers = []
    try:
        for index, bucket in enumerate(buckets):
            receive, send = ctx.Pipe(duplex=False)
            proc = ctx.Process(target=_work, args=(send, os.getpid(), transform_list, index, bucket), daemon=True)
            proc.start()
            send.close()
            workers.append((index, proc, receive, bucket[0]))
        return _collect(workers)
    finally:
        for _, proc, receive, _ in workers:
            if proc.is_alive():
                proc.kill()
            proc.join(timeout=5)
            receive.close()


def _collect(workers: list) -> dict[int, list] | ShardWriteError:
    results: dict[int, list] = {}
    pending = list(workers)
    sizes = {path: -1 for *_, path in workers}
    progress = time.monotonic()
    while pending:
        wait([w[2] for w in pending] + [w[1].sentinel for w in pending], timeout=1.0)
        for worker in list(pending):
            index, proc, receive, path = worker
            name = os.path.basename(path)
            status, value = "dead", None
            if receive.poll():
                try:
                    status, value = receive.recv()
                except EOFError:  # its end of the pipe closed with it: said below, by its exit status
                    proc.join(timeout=5)
            elif proc.is_alive():
                continue
            if status == "error":
                return ShardWriteError(f"writer worker pid {proc.pid} failed writing {name}: {value}")
            if status == "dead":
                code = proc.exitcode
                how = f"was killed by {signal.Signals(-code).name}" if code and code < 0 else f"exited with code {code}"
                return ShardWriteError(f"writer worker pid {proc.pid} {how} while writing {name}")
            results[index] = value
            pending.remove(worker)
        grown = {path: _size(path) for *_, path in pending}
        if any(grown[p] != sizes[p] for p in grown):
            sizes.update(grown)
            progress = time.monotonic()
        elif time.monotonic() - progress > STALL_S:
            names = ", ".join(f"pid {w[1].pid} ({os.path.basename(w[3])})" for w in pending)
            return ShardWriteError(f"writer worker {names} wrote nothing for {STALL_S:.0f} s: ended as hung")
    return results


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return -1


def _work(send, parent: int, transform_list: list, index: int, bucket: tuple) -> None:
    """A worker: megatron's write of one bucket's file; its results, or the error in one line, to `send`."""
    _die_with(parent)
    outbox = _Outbox()
    try:
        _Writer.write_preloaded_data(transform_list, index, bucket, outbox, _Done(), use_fsync=True)
        value = outbox.item[1]
        if isinstance(value, Exception):
            raise value
        send.send(("ok", value))
    except BaseException as err:  # psutil missing, a disk full, anything: reported, never a hang
        free = shutil.disk_usage(os.path.dirname(bucket[0])).free / 2**20
        send.send(("error", f"{type(err).__name__}: {' '.join(str(err).split())} ({free:.0f} MiB free there)"))


def _die_with(parent: int) -> None:
    """Ask the kernel to SIGKILL this process when its parent dies, so a `kill -9` of the run leaves no writer."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(1)


class _Outbox:
    """Stands in for megatron's results queue inside one worker: keeps what it puts."""

    item: tuple = (None, None)

    def put(self, item: tuple) -> None:
        self.item = item


class _Done:
    """Stands in for megatron's completion-count queue: the pipe and the sentinel say when a worker is done."""

    def get(self) -> None:
        pass

    def task_done(self) -> None:
        pass
