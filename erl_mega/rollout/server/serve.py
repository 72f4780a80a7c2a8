"""`erl-mega serve model.path=DIR [port=N] [max_batch_size=N] [prefix_cache_mb=N] [batching=continuous|request]
[dtype=float32|bfloat16] [pad_token_id=N] [device=cpu|cuda]`.

Loads an HF checkpoint into the embedded engine and serves it on 127.0.0.1 over SGLang's native API, and
OpenAI's /v1/chat/completions and /v1/completions (erl_mega/gateway) through the same scheduler.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, fields

USAGE = ("usage: erl-mega serve model.path=DIR [port=30000] [max_batch_size=64] [prefix_cache_mb=1024] "
         "[batching=continuous] [dtype=float32] [pad_token_id=N] [device=cpu]")


@dataclass(frozen=True)
class ServeConfig:
    """One server process: what it loads and where it listens."""

    model_path: str
    port: int = 30000
    max_batch_size: int = 64  # live rows of the continuous batch
    prefix_cache_mb: int = 1024  # KV of finished sequences kept for reuse by later turns; 0 disables
    batching: str = "continuous"  # or "request": a batch admits only when empty (the baseline it replaced)
    dtype: str = "float32"
    pad_token_id: int = -1  # -1: the checkpoint's pad (or eos) token, else 0
    device: str = "cpu"

    def __post_init__(self) -> None:
        if not 1 <= self.port <= 65535:
            raise ValueError(f"port={self.port}; must be in [1, 65535]")
        if self.max_batch_size < 1:
            raise ValueError(f"max_batch_size={self.max_batch_size}; must be >= 1")
        if self.prefix_cache_mb < 0:
            raise ValueError(f"prefix_cache_mb={self.prefix_cache_mb}; must be >= 0 (0 disables the prefix cache)")
        if self.batching not in ("continuous", "request"):
            raise ValueError(f"batching={self.batching!r}; choose 'continuous' or 'request'")
        if self.dtype not in ("float32", "bfloat16"):
            raise ValueError(f"dtype={self.dtype!r}; choose 'float32' or 'bfloat16'")
        if self.device not in ("cpu", "cuda"):
            raise ValueError(f"device={self.device!r}; choose 'cpu' or 'cuda'")


def parse(args: list[str]) -> ServeConfig:
    """`key=value` arguments into a ServeConfig; ValueError naming the bad key."""
    known = {f.name: f.type for f in fields(ServeConfig)}
    values: dict[str, object] = {}
    for arg in args:
        key, sep, value = arg.partition("=")
        key = "model_path" if key == "model.path" else key
        if not sep or key not in known:
            raise ValueError(f"{arg!r}: expected key=value with key in model.path, {', '.join(list(known)[1:])}")
        if known[key] == "int" and not value.lstrip("-").isdigit():
            raise ValueError(f"{key}={value!r}: must be an integer")
        values[key] = int(value) if known[key] == "int" else value
    if "model_path" not in values:
        raise ValueError("model.path is required")
    return ServeConfig(**values)


def main(args: list[str]) -> int:
    try:
        cfg = parse(args)
    except ValueError as err:
        print(f"erl-mega serve: {err}\n{USAGE}", file=sys.stderr)
        return 2
    import torch
    import uvicorn
    from transformers import AutoModelForCausalLM

    from erl_mega.gateway.mount import mount_on_server
    from erl_mega.rollout.local import LocalEngine
    from erl_mega.rollout.server.app import create_app

    dtype = torch.float32 if cfg.dtype == "float32" else torch.bfloat16
    model = AutoModelForCausalLM.from_pretrained(cfg.model_path, dtype=dtype).to(cfg.device)
    candidates = (cfg.pad_token_id if cfg.pad_token_id >= 0 else None, model.config.pad_token_id, model.config.eos_token_id)
    pad = next((int(c) for c in candidates if isinstance(c, int)), 0)
    engine = LocalEngine(model, pad, cfg.max_batch_size, prefix_cache_bytes=cfg.prefix_cache_mb << 20)
    app = create_app(engine, cfg.model_path, continuous=cfg.batching == "continuous")
    mount_on_server(app, cfg.model_path)  # /v1/*: the OpenAI-compatible gateway, through this server's scheduler
    uvicorn.run(app, host="127.0.0.1", port=cfg.port, log_level="warning")
    return 0
