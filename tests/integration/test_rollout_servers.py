"""`erl-mega train` with its rollouts served by two `erl-mega serve` processes: synchronous, asynchronous,
and an asynchronous run killed and resumed. Every server is gone once a run ends (or its group is killed)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from tiny_run import metrics, overrides, serving

from erl_mega.cli import load_config, main

pytestmark = pytest.mark.slow
SERVERS = {"rollout": "server", "rollout.num_servers": 2}
APART = SERVERS | {"rollout.placement": "disaggregated", "trainer.async_steps": 1}


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("policy")


def test_colocated_servers_run_the_erl_loop(cache, tmp_path):
    out = tmp_path / "colocated"
    assert main(["train", *overrides(cache, out, steps=2, checkpoint_every=0, **SERVERS)]) == 0
    rows = metrics(out)
    assert [r["step"] for r in rows] == [1, 2]
    for r in rows:
        assert r["rows"] > 0 and r["sync_bytes"] > 0
        assert r["logprob_gap_mean"] < 1e-4  # the servers hold the trainer's fp32 weights, pushed by shared memory
        assert r["mem_train_trainer_mb"] > 0 and r["mem_rollout_rollout_mb"] > 0  # peak memory per phase
    assert (out / "rollout_server0.log").exists() and (out / "rollout_server1.log").exists()
    assert not serving(str(cache))


def test_async_steps_bound_the_staleness(cache, tmp_path):
    out = tmp_path / "async"
    tis = {"algo.loss.off_policy.mode": "truncate"}
    assert main(["train", *overrides(cache, out, steps=3, checkpoint_every=0, **APART, **tis)]) == 0
    rows = metrics(out)
    assert [r["step"] for r in rows] == [1, 2, 3]
    for r in rows:
        assert r["staleness_max"] <= 1 and r["rows_rejected_stale"] == 0
        assert r["sync_bytes"] > 0 and "time_wait_rollout" in r and "is_weight_mean" in r
    # step 2's collection began while step 1 trained: its first replies came from version 0, one behind
    assert rows[1]["staleness_max"] == 1
    assert not serving(str(cache))


def test_async_run_killed_and_resumed_loses_and_repeats_no_step(cache, tmp_path):
    out = tmp_path / "killed"
    args = overrides(cache, out, steps=4, checkpoint_every=1, **APART)
    load_config(args)  # the same config the child runs
    run = subprocess.Popen([sys.executable, "-m", "erl_mega", "train", *args], start_new_session=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.monotonic() + 600
        while not ((out / "latest").exists() and (out / "latest").read_text() >= "step_000002"):
            assert run.poll() is None and time.monotonic() < deadline, "the run ended before its second checkpoint"
            time.sleep(0.2)
    finally:
        os.killpg(run.pid, signal.SIGKILL)  # the run and its servers: one process group
        run.wait()
    killed_at = int((out / "latest").read_text().removeprefix("step_"))
    assert main(["train", *overrides(cache, out, steps=4, checkpoint_every=1, resume="true", **APART)]) == 0
    rows = metrics(out)
    assert [r["step"] for r in rows] == [1, 2, 3, 4], f"killed after step {killed_at}"
    assert all(r["staleness_max"] <= 1 for r in rows)
    assert not serving(str(cache))
