"""Fixtures for the gateway: a tiny ChatML checkpoint on disk and a gateway process serving it."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from erl_mega.config.schema import TinyModelConfig
from erl_mega.model.hf_io import save_hf_checkpoint
from erl_mega.model.tiny import init_tiny_state, tiny_config
from erl_mega.model.tokenizer import train_tokenizer

CORPUS = ['<tool_call>\n{"name": "search", "arguments": {"query": "x"}}\n</tool_call> \\boxed{yes} Question: who'] * 20


def make_checkpoint(path: Path, max_position: int = 512) -> Path:
    """A randomly initialised tiny Qwen2 with a locally trained ChatML tokenizer, as an HF directory."""
    tokenizer = train_tokenizer(CORPUS, vocab_size=400)
    shape = TinyModelConfig(hidden_size=32, num_layers=2, num_heads=2, num_kv_heads=1, intermediate_size=64,
                            vocab_size=400, max_position=max_position)
    config = tiny_config(shape, tokenizer)
    return save_hf_checkpoint(path, config, init_tiny_state(config, seed=0), tokenizer)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("gateway") / "tiny")


@pytest.fixture(scope="session")
def tool_checkpoint(tmp_path_factory) -> Path:
    from tool_model import make_tool_model

    return make_tool_model(tmp_path_factory.mktemp("gateway") / "tool")


@contextlib.contextmanager
def serve(checkpoint: Path):
    """`python -m erl_mega.gateway.serve` as a real process on a free port; yields its /v1 URL; ended by pid."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "erl_mega.gateway.serve", "--model", str(checkpoint), "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        deadline = time.monotonic() + 120
        line = ""
        while "listening on" not in line:
            line = proc.stdout.readline()
            if not line and proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"gateway process did not start (exit {proc.poll()}): {line}")
        yield line.split("listening on ")[1].strip() + "/v1"
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


@pytest.fixture(scope="module")
def gateway_process(tiny_checkpoint):
    with serve(tiny_checkpoint) as url:
        yield url


@pytest.fixture(scope="module")
def tool_gateway(tool_checkpoint):
    """The gateway over the tool-calling checkpoint."""
    with serve(tool_checkpoint) as url:
        yield url
