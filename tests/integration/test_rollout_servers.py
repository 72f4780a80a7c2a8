"""Rollouts served by two `erl-mega serve` processes: the per-episode agent loop through the router samples
what the in-process batched loop does, and `erl-mega train` runs synchronous, asynchronous, and
asynchronous killed and resumed. Every server is gone once a run ends (or its process group is killed)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from rich.console import Console
from tiny_run import metrics, overrides, serving
from transformers import AutoModelForCausalLM

from erl_mega.cli import load_config, main
from erl_mega.envs.base import make_env, task_seed
from erl_mega.model.hf_io import load_tokenizer
from erl_mega.rollout.agent_loop import EpisodeSpec, play_episodes
from erl_mega.rollout.chat import ChatFormat
from erl_mega.rollout.client import ServerClient
from erl_mega.rollout.engine import SamplingParams
from erl_mega.rollout.local import LocalEngine
from erl_mega.rollout.router import Router
from erl_mega.rollout.server.process import ServerProcess
from erl_mega.run import resolve_policy

pytestmark = pytest.mark.slow
SERVERS = {"rollout": "server", "rollout.num_servers": 2}
APART = SERVERS | {"rollout.placement": "disaggregated", "trainer.async_steps": 1}


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("policy")


def test_episodes_through_the_router_are_the_in_process_loops(cache, tmp_path):
    cfg = load_config(overrides(cache, tmp_path / "unused"))
    policy = resolve_policy(cfg, Console(quiet=True))
    tokenizer = load_tokenizer(policy)
    chat = ChatFormat(tokenizer)
    make = lambda: make_env(cfg.env.name, max_turns=cfg.env.max_turns)  # noqa: E731
    specs = [EpisodeSpec(task_seed("train", i), cfg.env.initial_prompt, 100 + i) for i in range(8)]
    local = LocalEngine(AutoModelForCausalLM.from_pretrained(policy), tokenizer.pad_token_id)
    procs = [ServerProcess.embedded(str(policy), log_path=tmp_path / f"s{i}.log", pad_token_id=tokenizer.pad_token_id)
             for i in range(2)]
    try:
        for p in procs:
            p.start(wait=False)
        for p in procs:
            p.wait_healthy()
        router = Router([ServerClient(p.url) for p in procs], procs)
        for temperature in (0.0, 1.0):  # greedy, and sampled with the same per-turn seeds
            params = SamplingParams(cfg.rollout.max_new_tokens, temperature, stop_token_ids=chat.stop_ids)
            batched = play_episodes(make, local, chat, specs, params, 1024)
            independent = play_episodes(make, router, chat, specs, params, 1024)
            for a, b in zip(batched, independent):
                assert a.token_ids() == b.token_ids() and a.turns == b.turns
                torch.testing.assert_close(torch.tensor(a.rollout_logprobs()), torch.tensor(b.rollout_logprobs()),
                                           atol=1e-5, rtol=0)
        assert sum(m["requests"] > 0 for m in router.metrics()) == 2  # both servers served episodes
    finally:
        for p in procs:
            p.stop()


def test_colocated_servers_run_the_erl_loop(cache, tmp_path):
    out = tmp_path / "colocated"
    # async_steps with colocated servers: runs synchronously (rollout shares the trainer's devices)
    assert main(["train", *overrides(cache, out, steps=2, checkpoint_every=0, **SERVERS, **{"trainer.async_steps": 1})]) == 0
    rows = metrics(out)
    assert [r["step"] for r in rows] == [1, 2]
    for r in rows:
        assert r["rows"] > 0 and r["sync_bytes"] > 0 and "staleness_max" not in r
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


def test_sigterm_ends_the_run_and_its_servers(cache, tmp_path):
    out = tmp_path / "terminated"
    args = overrides(cache, out, steps=50, checkpoint_every=0, **SERVERS)
    run = subprocess.Popen([sys.executable, "-m", "erl_mega", "train", *args], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.monotonic() + 300
        while not (out / "metrics.jsonl").exists():  # servers up, training under way
            assert run.poll() is None and time.monotonic() < deadline
            time.sleep(0.2)
        assert len(serving(str(cache))) == 2
        run.terminate()  # SIGTERM to the run alone, as scancel or kill would
        assert run.wait(60) == 128 + signal.SIGTERM
    finally:
        if run.poll() is None:
            run.kill()
    assert not serving(str(cache))


def test_attach_running_servers_by_url(cache, tmp_path):
    """rollout=sglang with rollout.urls attaches to servers it did not start (here ours, which speak SGLang's API)
    and leaves them running; weights go by disk."""
    cfg = load_config(overrides(cache, tmp_path / "unused"))
    policy = resolve_policy(cfg, Console(quiet=True))
    pad = load_tokenizer(policy).pad_token_id
    procs = [ServerProcess.embedded(str(policy), log_path=tmp_path / f"s{i}.log", pad_token_id=pad) for i in range(2)]
    try:
        for p in procs:
            p.start(wait=False)
        for p in procs:
            p.wait_healthy()
        urls = "[" + ",".join(p.url for p in procs) + "]"
        out = tmp_path / "attached"
        attach = {"rollout": "sglang", "rollout.urls": urls, "rollout.placement": "disaggregated", "rollout.transport": "disk"}
        assert main(["train", *overrides(cache, out, steps=1, checkpoint_every=0, **attach)]) == 0
        (row,) = metrics(out)
        assert row["sync_bytes"] > 0 and row["logprob_gap_mean"] < 1e-4
        assert all(p.alive() for p in procs)  # not ours to end
        assert [ServerClient(p.url).server_version() for p in procs] == ["1", "1"]  # step 1's weights, from disk
    finally:
        for p in procs:
            p.stop()
