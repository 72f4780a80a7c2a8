"""A run's resolved config, written to `<out_dir>/config.yaml`, and what `resume=true` may change in it."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import yaml

FILE = "config.yaml"
# Keys that change neither the model nor the algorithm: how long, where, how often, how it is laid out
# (micro-batching and the parallel layout are exact regroupings; checkpoints reshard on load).
RESUMABLE = (
    "steps", "out_dir", "checkpoint_every", "resume", "overwrite", "eval_tasks", "plot", "model.cache_dir",
    "rollout.max_batch_size", "trainer.micro_batch_size", "trainer.bucket_mb", "trainer.tp", "trainer.pp",
    "trainer.vpp", "trainer.packing", "trainer.max_tokens_per_micro_batch",
)


def as_yaml(cfg: Any) -> str:
    """The resolved config as YAML: what `--cfg job` prints and `config.yaml` holds."""
    return yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False, default_flow_style=False)


def write(cfg: Any, out_dir: Path) -> Path:
    """Record the run's resolved config in its output directory."""
    path = Path(out_dir) / FILE
    path.write_text(as_yaml(cfg))
    return path


def resume_conflicts(cfg: Any) -> str | None:
    """With resume=true: one line naming the keys that differ from the stored run and change its model or algorithm."""
    path = Path(cfg.out_dir) / FILE
    if not cfg.resume or not path.is_file():
        return None
    try:
        stored = _flat(yaml.safe_load(path.read_text()) or {})
    except yaml.YAMLError as err:
        return f"resume=true: {path} does not parse ({str(err).splitlines()[0]}); restore it or start a new out_dir"
    now = _flat(dataclasses.asdict(cfg))
    keys = sorted(k for k in stored.keys() | now.keys() if stored.get(k, "<absent>") != now.get(k, "<absent>")
                  and not _resumable(k))
    if not keys:
        return None
    changes = ", ".join(f"{k} {stored.get(k, '<absent>')!r} -> {now.get(k, '<absent>')!r}" for k in keys)
    return f"resume=true refused: {changes} differ from the run in {path} and change its model or algorithm"


def _resumable(key: str) -> bool:
    return any(key == r or key.startswith(r + ".") for r in RESUMABLE)


def _flat(tree: dict, prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            flat |= _flat(value, f"{prefix}{key}.")
        else:
            flat[prefix + key] = value
    return flat
