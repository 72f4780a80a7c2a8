"""HF-format checkpoints in and out: config + safetensors (single or sharded) + tokenizer."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from transformers import AutoConfig, AutoTokenizer, PretrainedConfig, PreTrainedTokenizerBase

SUPPORTED = ("llama", "qwen2", "qwen3")


def load_hf_config(path: str | Path) -> PretrainedConfig:
    """The model config of a checkpoint directory; an unsupported architecture is one clear error."""
    path = Path(path)
    if not (path / "config.json").exists():
        raise ValueError(f"model.path={str(path)!r} has no config.json: not an HF-format checkpoint directory")
    config = AutoConfig.from_pretrained(path)
    if config.model_type not in SUPPORTED:
        raise ValueError(f"model type {config.model_type!r} at {path}; supported: {list(SUPPORTED)}")
    return config


def load_hf_state(path: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of `model.safetensors` or of the shards named by `model.safetensors.index.json`."""
    path = Path(path)
    index = path / "model.safetensors.index.json"
    if index.exists():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        state: dict[str, torch.Tensor] = {}
        for shard in shards:
            state |= load_file(path / shard)
        return state
    single = path / "model.safetensors"
    if not single.exists():
        raise ValueError(f"{path} holds no model.safetensors (nor an index of shards)")
    return load_file(single)


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerBase:
    """The checkpoint's tokenizer, with a pad token (the end-of-text token when it has none)."""
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def save_hf_checkpoint(
    path: str | Path, config: PretrainedConfig, state: dict[str, torch.Tensor], tokenizer: PreTrainedTokenizerBase
) -> Path:
    """Write a loadable HF directory atomically: into `<path>.tmp`, then rename over `path`."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    config.save_pretrained(tmp)
    save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, tmp / "model.safetensors", metadata={"format": "pt"})
    tokenizer.save_pretrained(tmp)
    if path.exists():
        shutil.rmtree(path)
    os.replace(tmp, path)
    return path


def checkpoint_problem(path: str | Path) -> str | None:
    """Why `path` is not a loadable HF checkpoint directory (config.json that parses, weights present), or None."""
    path = Path(path).expanduser()
    if not path.exists():
        return f"{path} does not exist"
    if not path.is_dir():
        return f"{path} is a file, not an HF checkpoint directory"
    try:
        config = json.loads((path / "config.json").read_text())
    except FileNotFoundError:
        return f"{path} has no config.json: not an HF checkpoint directory"
    except (OSError, ValueError) as err:
        return f"{path}/config.json does not parse: {str(err).splitlines()[0]}"
    if not isinstance(config, dict) or config.get("model_type") not in SUPPORTED:
        kind = config.get("model_type") if isinstance(config, dict) else None
        return f"{path}/config.json: model type {kind!r}; supported: {list(SUPPORTED)}"
    index = path / "model.safetensors.index.json"
    if index.exists():
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return f"{index} does not parse as a shard index"
        missing = [s for s in shards if not (path / s).is_file()]
        return f"{path} lacks weight shards {missing}" if missing else None
    return None if (path / "model.safetensors").is_file() else f"{path} holds no weights (model.safetensors)"
