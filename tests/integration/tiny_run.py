"""A toy-size `erl-mega train` for integration tests: the overrides and reading back metrics.jsonl."""

from __future__ import annotations

import json
import os
from pathlib import Path


def overrides(cache: Path, out: Path, **extra) -> list[str]:
    """key=value overrides of a seconds-long ERL run on the tiny model (warm-up cached under `cache`)."""
    base = {
        "model.cache_dir": str(cache),
        "model.tiny.hidden_size": 64,
        "model.tiny.num_layers": 2,
        "model.tiny.intermediate_size": 128,
        "model.tiny.vocab_size": 400,
        "model.warmup.episodes": 48,
        "model.warmup.epochs": 1,
        "model.warmup.noise": 0.6,
        "tasks_per_step": 2,
        "algo.n_rollouts": 2,
        "eval_tasks": 4,
        "out_dir": str(out),
        "plot": "false",
    }
    return [f"{k}={v}" for k, v in (base | extra).items()]


def metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def serving(marker: str) -> list[int]:
    """Pids of `erl-mega serve` processes whose command line mentions `marker` (a test's own directory)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"serve" in argv and any(marker.encode() in a for a in argv) and int(entry.name) != os.getpid():
            found.append(int(entry.name))
    return found
