"""Start-up checks that need more than one field or a look at the machine: each problem is one line, before any work.

The parallel layout against the world size and the model's shape, the environment against the model
that can play it, `out_dir` writable with room for a checkpoint, and a resumed run's stored config.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import struct
from pathlib import Path
from types import SimpleNamespace

from erl_mega.config import run_record
from erl_mega.config.schema import ModelConfig, RunConfig
from erl_mega.run_dir import out_dir_problem

# A checkpoint holds fp32 weights, their fp32 main copy and Adam's two moments: 16 bytes per parameter.
CHECKPOINT_BYTES_PER_PARAM = 16


def problems(cfg: RunConfig) -> list[str]:
    """Every start-up problem of `cfg`, one line each (empty when the run can start)."""
    found = [layout_problem(cfg), env_model_problem(cfg), run_record.resume_conflicts(cfg)]
    out = out_dir_problem(Path(cfg.out_dir).expanduser())
    found.append(out if out is not None else disk_problem(cfg))
    return [p for p in found if p is not None]


def layout_problem(cfg: RunConfig) -> str | None:
    """trainer.tp / pp / vpp against the world size (torchrun's WORLD_SIZE, else 1) and the model's shape."""
    from erl_mega.train.layout import parallel_layout

    shape = model_shape(cfg.model)
    if shape is None:  # a source not converted yet: its shape is known after conversion, checked then
        return None
    world = int(os.environ.get("WORLD_SIZE", "1"))
    t = cfg.trainer
    try:
        parallel_layout(world, t.tp, t.pp, shape, t.vpp)
    except ValueError as err:
        return str(err)
    return None


def model_shape(model: ModelConfig) -> SimpleNamespace | None:
    """The dimensions the parallel layout divides, from model.tiny or the checkpoint's config.json."""
    if model.path is None and model.source is None:
        t = model.tiny  # the tokenizer fixes the vocabulary later: 0 divides by any tp here
        return SimpleNamespace(num_attention_heads=t.num_heads, num_key_value_heads=t.num_kv_heads, vocab_size=0,
                               intermediate_size=t.intermediate_size, num_hidden_layers=t.num_layers)
    directory = _checkpoint_dir(model)
    if directory is None:
        return None
    c = json.loads((directory / "config.json").read_text())
    return SimpleNamespace(num_attention_heads=c["num_attention_heads"], vocab_size=c["vocab_size"],
                           num_key_value_heads=c.get("num_key_value_heads", c["num_attention_heads"]),
                           intermediate_size=c["intermediate_size"], num_hidden_layers=c["num_hidden_layers"])


def env_model_problem(cfg: RunConfig) -> str | None:
    """The embedded base policy is warmed up on some environments only; others need a model.path or source."""
    from erl_mega.model.demos import DEMONSTRATED_ENVS

    if cfg.model.path is not None or cfg.model.source is not None or cfg.env.name in DEMONSTRATED_ENVS:
        return None
    return (f"env.name={cfg.env.name!r} with the embedded model: its base policy is warmed up on "
            f"{list(DEMONSTRATED_ENVS)} only; set model.path to an HF checkpoint directory or choose model=smollm2-135m")


def disk_problem(cfg: RunConfig) -> str | None:
    """Free space on out_dir's filesystem for at least one checkpoint (estimated from the parameter count)."""
    if not cfg.checkpoint_every:
        return None
    params = parameter_count(cfg.model)
    if params is None:
        return None
    out = Path(cfg.out_dir).expanduser()
    existing = next(p for p in (out, *out.parents) if p.exists())
    need, free = params * CHECKPOINT_BYTES_PER_PARAM, shutil.disk_usage(existing).free
    if free >= need:
        return None
    return (f"out_dir={str(out)!r}: {free / 2**20:.0f} MiB free, a checkpoint needs about {need / 2**20:.0f} MiB "
            f"({params:,} parameters x {CHECKPOINT_BYTES_PER_PARAM} bytes); free space or set checkpoint_every=0")


def parameter_count(model: ModelConfig) -> int | None:
    """Parameters of the configured model: from model.tiny's shape, or the checkpoint's safetensors headers."""
    if model.path is None and model.source is None:
        t = model.tiny
        kv = t.hidden_size // t.num_heads * t.num_kv_heads
        layer = 2 * t.hidden_size * t.hidden_size + 2 * t.hidden_size * kv + 3 * t.hidden_size * t.intermediate_size
        return t.num_layers * (layer + 2 * t.hidden_size) + 2 * t.vocab_size * t.hidden_size + t.hidden_size
    directory = _checkpoint_dir(model)
    if directory is None:
        return None
    return sum(_safetensors_numel(f) for f in directory.glob("*.safetensors"))


def _checkpoint_dir(model: ModelConfig) -> Path | None:
    if model.path is not None:
        return Path(model.path).expanduser()
    from erl_mega.model.gguf import converted_dir

    directory = converted_dir(model.source, model.cache_dir)
    return directory if (directory / "config.json").is_file() else None


def _safetensors_numel(path: Path) -> int:
    """Elements in a safetensors file, read from its header alone."""
    with path.open("rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(length))
    return sum(math.prod(entry["shape"]) for name, entry in header.items() if name != "__metadata__")
