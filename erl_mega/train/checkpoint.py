"""Run checkpoints: written atomically (a temp directory, then rename), resumed exactly.

A checkpoint directory `step_<N>/` holds the trainer state (`trainer/`: megatron-core's
distributed checkpoint of the policy, its optimizer and the version, loadable at another
TP x PP x DP layout), the leader's reflection memory and RNG states and the data position;
`latest` names the newest one. Every rank calls these functions together.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch

from erl_mega.algo.memory import ReflectionMemory
from erl_mega.train.dist import barrier, is_leader


def save_checkpoint(out_dir: Path, step: int, trainer, memory: ReflectionMemory, extra: dict) -> Path:
    """Write `step_<N>` atomically and point `latest` at it; returns the directory."""
    final = out_dir / f"step_{step:06d}"
    tmp = out_dir / f".step_{step:06d}.tmp"
    if is_leader():
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    barrier()
    trainer.save(tmp / "trainer.pt")
    barrier()
    if is_leader():
        memory.save(tmp / "memory.json")
        rng = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
        torch.save(rng, tmp / "rng.pt")
        (tmp / "state.json").write_text(json.dumps({"step": step} | extra, indent=1))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        pointer = out_dir / ".latest.tmp"
        pointer.write_text(final.name)
        os.replace(pointer, out_dir / "latest")
    barrier()
    return final


def latest_checkpoint(out_dir: Path) -> Path | None:
    """The newest complete checkpoint of a run, or None."""
    pointer = out_dir / "latest"
    return out_dir / pointer.read_text().strip() if pointer.exists() else None


def load_checkpoint(path: Path, trainer) -> tuple[ReflectionMemory, dict]:
    """Restore trainer and RNG states; returns the memory and the saved run state (step, data position)."""
    trainer.load(path / "trainer.pt")
    rng = torch.load(path / "rng.pt", weights_only=False)
    random.setstate(rng["python"])
    np.random.set_state(rng["numpy"])
    torch.set_rng_state(rng["torch"])
    return ReflectionMemory.load(path / "memory.json"), json.loads((path / "state.json").read_text())
