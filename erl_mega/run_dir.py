"""A run's output directory: checked before any work, held by one run at a time, never silently reused."""

from __future__ import annotations

import json
import os
import socket
import sys
import tempfile
from pathlib import Path

LOCK = ".lock"
RUN_FILES = ("metrics.jsonl", "latest")  # a directory holding either holds another run's results


class RunDirError(Exception):
    """The output directory cannot be used as asked; the message is the one line the CLI prints."""


def out_dir_problem(out: Path) -> str | None:
    """Whether `out` is, or can be made, a directory this process writes into (probed without leaving anything)."""
    if out.exists() and not out.is_dir():
        return f"out_dir={str(out)!r}: is a file, not a directory"
    existing = next(p for p in (out, *out.parents) if p.exists())
    if not existing.is_dir():
        return f"out_dir={str(out)!r}: {existing} is a file, so no directory can be made under it"
    try:
        tempfile.TemporaryDirectory(dir=existing).cleanup()
    except OSError as err:
        return f"out_dir={str(out)!r}: cannot write in {existing} ({err.strerror or err})"
    return None


def check_out_dir(out: Path) -> None:
    """Fail in one line, before any work, on an out_dir that is not a writable directory; else make it."""
    problem = out_dir_problem(out)
    if problem is not None:
        raise RunDirError(problem)
    out.mkdir(parents=True, exist_ok=True)


def claim_for_run(out: Path, resume: bool, overwrite: bool) -> None:
    """Under the lock: refuse to start afresh over another run's files unless `overwrite`, which removes them."""
    if resume and (out / "latest").exists():
        return
    found = [name for name in RUN_FILES if (out / name).exists()]
    if found and not overwrite:
        raise RunDirError(
            f"out_dir={str(out)!r} holds another run ({', '.join(found)}): continue it with resume=true, "
            "choose a new out_dir, or replace it with overwrite=true"
        )
    for name in found:  # the old checkpoints' step_* directories are overwritten as the new run saves
        (out / name).unlink()


class RunLock:
    """`out_dir/.lock` names the holder (pid, host); a second run refuses, a dead holder's lock is taken over."""

    def __init__(self, out: Path) -> None:
        self.path = out / LOCK
        self.held = False

    def __enter__(self) -> "RunLock":
        me = {"pid": os.getpid(), "host": socket.gethostname()}
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._take_over_if_stale()
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            self.held = True
            return self
        raise RunDirError(f"could not take {self.path}: another run took it at the same moment")

    def _take_over_if_stale(self) -> None:
        try:
            holder = json.loads(self.path.read_text())
            pid, host = int(holder["pid"]), str(holder["host"])
        except (OSError, ValueError, KeyError, TypeError):
            print(f"erl-mega: {self.path} is unreadable; taking it over", file=sys.stderr)
            self.path.unlink(missing_ok=True)
            return
        if host == socket.gethostname() and not _alive(pid):
            print(f"erl-mega: {self.path} was held by pid {pid}, which is gone: a stale lock, taken over", file=sys.stderr)
            self.path.unlink(missing_ok=True)
            return
        raise RunDirError(
            f"out_dir={str(self.path.parent)!r} is in use by pid {pid} on {host} ({self.path}); "
            "wait for it, or choose another out_dir"
        )

    def __exit__(self, *exc: object) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
