"""Run checkpoints: written atomically with checksums, verified and resumed exactly, never half-trusted.

A checkpoint directory `step_<N>/` holds the trainer state (`trainer/`: megatron-core's
distributed checkpoint of the policy, its optimizer and the version, loadable at another
TP x PP x DP layout), the leader's reflection memory and RNG states, the run state and
`checksums.json` (size and SHA-256 of every file); `latest` names the newest one. It is written
into `.step_<N>.tmp/` and renamed when complete: a failed write removes the temp directory and
leaves the previous checkpoint the latest. On resume a damaged checkpoint is named and the newest
intact one is used instead. Every rank calls these functions together.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import sys
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.distributed.checkpoint.api import CheckpointException

from erl_mega.algo.memory import ReflectionMemory
from erl_mega.metrics import read_metrics
from erl_mega.train import checksums
from erl_mega.train.dist import barrier, broadcast_from_leader, is_leader
from erl_mega.train.shard_writer import ShardWriteError

_STEP_DIR = re.compile(r"step_(\d+)")


class CheckpointError(Exception):
    """A checkpoint cannot be written or resumed as asked; the message is the one line the CLI prints."""


def save_checkpoint(out_dir: Path, step: int, trainer, memory: ReflectionMemory, extra: dict) -> Path:
    """Write `step_<N>` atomically and point `latest` at it; returns the directory."""
    final = out_dir / f"step_{step:06d}"
    tmp = out_dir / f".step_{step:06d}.tmp"
    if is_leader():
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    barrier()
    try:
        trainer.save(tmp / "trainer.pt")
        _on_leader(_write_run_state, tmp, step, memory, extra)
        digests = checksums.digests(tmp)
        _on_leader(_publish, out_dir, tmp, final, digests)
    except (ShardWriteError, OSError) as err:
        if is_leader():
            shutil.rmtree(tmp, ignore_errors=True)
        pointer = out_dir / "latest"
        previous = pointer.read_text().strip() if pointer.exists() else "no checkpoint"
        raise CheckpointError(f"checkpoint {tmp} not written: {err}; removed it, {previous} stays the latest") from None
    barrier()
    return final


def _write_run_state(tmp: Path, step: int, memory: ReflectionMemory, extra: dict) -> None:
    memory.save(tmp / "memory.json")
    rng = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    torch.save(rng, tmp / "rng.pt")
    (tmp / "state.json").write_text(json.dumps({"step": step} | extra, indent=1))


def _publish(out_dir: Path, tmp: Path, final: Path, digests: dict) -> None:
    checksums.write_manifest(tmp, digests)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    pointer = out_dir / ".latest.tmp"
    pointer.write_text(final.name)
    os.replace(pointer, out_dir / "latest")


def _on_leader(write: Callable, *args: object) -> None:
    """`write(*args)` on the leader; an OSError there is raised on every rank (no rank waits on a failed one)."""
    error = None
    if is_leader():
        try:
            write(*args)
        except OSError as err:
            error = str(err)
    error = broadcast_from_leader(error)
    if error is not None:
        raise OSError(error)


def resume_point(out_dir: Path) -> Path | None:
    """The checkpoint `resume=true` continues from: `latest` if intact, else the newest intact one (collective).

    None when the run has no `latest`. Damaged checkpoints are named, with the one resumed from, in
    one line; none intact, or a run state that disagrees with its directory or the metrics, is a
    CheckpointError.
    """
    pointer = out_dir / "latest"
    if not pointer.exists():
        return None
    said = []
    order = sorted((p for p in out_dir.iterdir() if _STEP_DIR.fullmatch(p.name) and p.is_dir()),
                   key=lambda p: -int(p.name[5:]))
    name = pointer.read_text().strip()
    if not name:
        said.append("latest is empty")
    elif (out_dir / name) in order:
        order.remove(out_dir / name)
        order.insert(0, out_dir / name)
    else:
        said.append(f"latest names {name!r}, which is not a checkpoint directory")
    for path in order:
        problem = checksums.damage(path)
        if problem is None:
            disagreement = broadcast_from_leader(_disagreement(path, out_dir) if is_leader() else None)
            if disagreement is not None:
                raise CheckpointError(disagreement)
            if said and is_leader():
                print(f"erl-mega: resuming from {path.name}, the newest intact checkpoint: {'; '.join(said)}",
                      file=sys.stderr)
            return path
        said.append(f"{path.name} is damaged ({problem})")
    raise CheckpointError(f"out_dir={str(out_dir)!r} has no intact checkpoint to resume: {'; '.join(said)}")


def _disagreement(path: Path, out_dir: Path) -> str | None:
    """Why the checkpoint's run state does not match its directory name or the run's metrics, if it does not."""
    step = json.loads((path / "state.json").read_text()).get("step")  # checksummed: readable
    if step != int(path.name[5:]):
        return (f"{path / 'state.json'} says step {step} but the checkpoint is {path.name}: "
                "its weights belong to another step; refusing to resume")
    metrics = out_dir / "metrics.jsonl"
    try:
        logged = [r["step"] for r in read_metrics(metrics) if r["step"] <= step] if metrics.exists() else []
    except ValueError as err:
        return str(err)
    if logged != list(range(1, step + 1)):
        shown = f"steps {logged[0]}..{logged[-1]} ({len(logged)} lines)" if logged else "no steps"
        return (f"{metrics} holds {shown} up to {path.name}, not steps 1..{step}: "
                "the log and the checkpoint disagree; refusing to resume")
    return None


def load_checkpoint(path: Path, trainer) -> tuple[ReflectionMemory, dict]:
    """Restore trainer and RNG states; returns the memory and the saved run state (step, data position)."""
    try:
        trainer.load(path / "trainer.pt")
        rng = torch.load(path / "rng.pt", weights_only=False)
        random.setstate(rng["python"])
        np.random.set_state(rng["numpy"])
        torch.set_rng_state(rng["torch"])
        return ReflectionMemory.load(path / "memory.json"), json.loads((path / "state.json").read_text())
    except (Exception, CheckpointException) as err:  # a file read back: whatever it holds is one line, not a traceback
        first = (str(err).strip().splitlines() or [""])[0][:300]
        raise CheckpointError(f"checkpoint {path} cannot be loaded: {type(err).__name__}: {first}") from None
