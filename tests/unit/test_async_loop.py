"""The asynchronous producer: it never runs more than `async_steps` versions ahead, drains before a
checkpoint's successor, hands its failures to the trainer, and rows older than the bound are rejected."""

from __future__ import annotations

import threading
import time

import pytest

from erl_mega.algo.rows import TrainRow
from erl_mega.async_loop import AsyncCollector, fresh_rows
from erl_mega.rollout.trajectory import Segment, Trajectory
from erl_mega.train.batch import collate


def _batch(versions: list[int]):
    rows = [TrainRow(Trajectory((Segment((1, 2)), Segment((3, 4), (-0.1, -0.2))), (), 1.0, v), "policy", "attempt1", 0.5)
            for v in versions]
    return collate(rows, 0)


def test_rows_older_than_the_bound_are_rejected():
    batch, stale = fresh_rows(_batch([4, 3, 2, 4]), version=4, async_steps=1)
    assert batch.versions == (4, 3, 4) and batch.num_rows == 3
    assert stale == {"staleness_mean": 0.75, "staleness_max": 2.0, "rows_rejected_stale": 1.0}
    with pytest.raises(RuntimeError, match="every row is older"):
        fresh_rows(_batch([1, 2]), version=4, async_steps=1)


def _run(async_steps: int, checkpoint_every: int, steps: int = 6) -> list[tuple[int, int]]:
    """(step, pushed step when its collection began) for a trainer that takes each batch and pushes."""
    pushed, started, lock = [0], [], threading.Lock()

    def collect(step):
        with lock:
            started.append((step, pushed[0]))
        time.sleep(0.01)
        return _batch([pushed[0]]), {"step": float(step)}

    collector = AsyncCollector(collect, 0, steps, async_steps, checkpoint_every)
    try:
        for step in range(1, steps + 1):
            batch, metrics = collector.take(step, version=step - 1)
            assert metrics["step"] == step and metrics["staleness_max"] <= async_steps
            time.sleep(0.03)  # train
            with lock:
                pushed[0] = step
            collector.done(step)
    finally:
        collector.close()
    return started


def test_collection_runs_ahead_by_at_most_async_steps():
    started = _run(async_steps=1, checkpoint_every=0)
    assert [s for s, _ in started] == [1, 2, 3, 4, 5, 6]
    assert all(pushed >= step - 2 for step, pushed in started)  # weights of step s - 1 - k were pushed
    assert any(pushed == step - 2 for step, pushed in started)  # and it did run ahead
    assert all(pushed == step - 1 for step, pushed in _run(async_steps=0, checkpoint_every=0))


def test_no_batch_is_in_flight_across_a_checkpoint():
    started = _run(async_steps=2, checkpoint_every=2)
    for step, pushed in started:
        if (step - 1) % 2 == 0 and step > 1:
            assert pushed == step - 1  # waited for the checkpointed step


def test_a_producer_failure_reaches_the_trainer():
    def collect(step):
        raise ValueError("server gone")

    collector = AsyncCollector(collect, 0, 3, 1, 0)
    with pytest.raises(RuntimeError, match="producer failed") as err:
        collector.take(1, 0)
    assert isinstance(err.value.__cause__, ValueError)
    collector.close()


def test_nothing_is_collected_past_the_env_step_budget():
    started = []

    def collect(step):
        started.append(step)
        return _batch([0]), {"env_steps": 10.0}

    collector = AsyncCollector(collect, 0, 10, async_steps=3, checkpoint_every=0, env_steps=5, env_step_budget=30)
    for step in (1, 2, 3):  # 5 + 3 * 10 >= 30 after step 3: the run's loop stops there
        collector.take(step, version=step - 1)
        collector.done(step)
    collector.close()
    assert started == [1, 2, 3]
