"""A decoder's shape from a named preset (published HF config.json fixtures) or any HF config path."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

PRESETS_DIR = Path(__file__).parent / "presets"


@dataclass(frozen=True)
class ModelShape:
    """What memory and FLOPs depend on: a dense GQA / SwiGLU decoder (Llama, Qwen2, Qwen3)."""

    name: str
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    ffn: int
    vocab: int
    tied: bool
    qkv_bias: bool  # Qwen2
    qk_norm: bool  # Qwen3


def presets() -> list[str]:
    return sorted(p.stem for p in PRESETS_DIR.glob("*.json"))


def _config_file(model: str) -> Path:
    preset = PRESETS_DIR / f"{model}.json"
    if preset.exists():
        return preset
    path = Path(model).expanduser()
    if path.is_dir():
        path = path / "config.json"
    if not path.is_file():
        raise ValueError(f"model={model!r} is neither a preset {presets()} nor an HF config path")
    return path


def load_shape(model: str) -> ModelShape:
    """The shape of preset `model`, or of the HF config.json at (or in) path `model`."""
    cfg = json.loads(_config_file(model).read_text())
    heads = cfg["num_attention_heads"]
    return ModelShape(
        name=model,
        hidden=cfg["hidden_size"],
        layers=cfg["num_hidden_layers"],
        heads=heads,
        kv_heads=cfg.get("num_key_value_heads") or heads,
        head_dim=cfg.get("head_dim") or cfg["hidden_size"] // heads,
        ffn=cfg["intermediate_size"],
        vocab=cfg["vocab_size"],
        tied=bool(cfg.get("tie_word_embeddings", False)),
        qkv_bias=cfg["model_type"] == "qwen2",
        qk_norm=cfg["model_type"] == "qwen3",
    )
