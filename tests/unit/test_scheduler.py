"""The server's scheduler thread: joining mid-decode, aborting a running request, draining before an update.

Run: python -m pytest tests/unit/test_scheduler.py -q
"""

from __future__ import annotations

import time

import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from erl_mega.rollout.engine import GenerationRequest, SamplingParams
from erl_mega.rollout.local import LocalEngine
from erl_mega.rollout.server.scheduler import Aborted, Scheduler

LONG = GenerationRequest((1, 2, 3), SamplingParams(max_new_tokens=60, temperature=0.0))
SHORT = GenerationRequest((4, 5), SamplingParams(max_new_tokens=2, temperature=0.0))


@pytest.fixture
def engine() -> LocalEngine:
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512)
    return LocalEngine(Qwen2ForCausalLM(config).eval(), 0)


def _wait_steps(scheduler: Scheduler, n: int) -> None:
    deadline = time.monotonic() + 60
    while scheduler.stats["decode_steps"] < n:
        assert time.monotonic() < deadline
        time.sleep(0.005)


@pytest.mark.parametrize("continuous", [True, False])
def test_short_request_overtakes_only_when_continuous(engine, continuous):
    scheduler = Scheduler(engine, continuous)
    long_future = scheduler.submit("long", LONG)
    _wait_steps(scheduler, 3)
    short = scheduler.submit("short", SHORT).result(60)
    assert long_future.done() != continuous  # continuous: the short one finished while the long one decoded
    assert long_future.result(60).completion.token_ids and short.completion.token_ids
    scheduler.stop()


def test_abort_removes_a_running_request(engine):
    scheduler = Scheduler(engine)
    future = scheduler.submit("long", LONG)
    _wait_steps(scheduler, 3)
    scheduler.abort("long")
    with pytest.raises(Aborted):
        future.result(60)
    assert scheduler.submit("short", SHORT).result(60).completion.finish_reason == "length"  # still serving
    scheduler.stop()


def test_exclusive_runs_after_live_rows_finish(engine):
    scheduler = Scheduler(engine)
    future = scheduler.submit("long", LONG)
    _wait_steps(scheduler, 3)
    assert scheduler.exclusive(future.done)  # the update saw nothing in flight
    scheduler.stop()
