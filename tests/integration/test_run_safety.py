"""`erl-mega train` as its own process under real signals: kill -9 leaves no orphans and resumes exactly,
and a script that calls `erl_mega.cli.main` without a `__main__` guard trains once."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time

import psutil
import pytest

pytestmark = pytest.mark.slow

TINY = {
    "model.tiny.hidden_size": 64, "model.tiny.num_layers": 2, "model.tiny.intermediate_size": 128,
    "model.tiny.vocab_size": 400, "model.warmup.episodes": 48, "model.warmup.epochs": 1, "model.warmup.noise": 0.6,
    "tasks_per_step": 2, "algo.n_rollouts": 2, "eval_tasks": 2, "plot": "false", "checkpoint_every": 1,
}
ONE_THREAD = os.environ | {"OMP_NUM_THREADS": "1"}  # every run of a comparison: thread counts change float reductions
TIMING = ("time_", "_per_s", "sync_seconds", "mem_")  # wall-clock and resident-memory measurements: the only fields two runs may differ in


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")  # the warmed-up base policy, built by the first run, shared


def argv(cache, out, **extra):
    keys = TINY | {"model.cache_dir": str(cache), "out_dir": str(out)} | extra
    return [sys.executable, "-m", "erl_mega", "train", *(f"{k}={v}" for k, v in keys.items())]


def start(cmd):
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=ONE_THREAD)


def metrics(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def comparable(rows):
    return [{k: v for k, v in r.items() if not any(t in k for t in TIMING)} for r in rows]


def wait_for(predicate, proc, timeout=300.0):
    """The predicate's first truthy value (asking twice races: the run's children change between two looks)."""
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)
    return value


def slow_writer_script(path, args):
    """A script running `erl-mega train` whose shard writers (forked) wait 10 min after opening their files."""
    path.write_text(textwrap.dedent(f"""\
        import time
        from megatron.core.dist_checkpointing.strategies import filesystem_async
        real = filesystem_async._write_item
        filesystem_async._write_item = lambda *a, **k: (time.sleep(600), real(*a, **k))[1]
        import erl_mega.cli
        raise SystemExit(erl_mega.cli.main(["train", *{args!r}]))
        """))
    return [sys.executable, str(path)]


def writers_writing(out, run):
    """The run's writer workers, once each has opened its shard file (so each has asked to die with the run)."""
    shards = list(out.glob(".step_*.tmp/trainer/*.distcp"))
    children = psutil.Process(run.pid).children()
    return children if shards and len(shards) == len(children) else []


def test_kill_9_leaves_no_process_behind(cache, tmp_path):
    out = tmp_path / "run"
    run = start(slow_writer_script(tmp_path / "train.py", argv(cache, out, steps=2)[4:]))
    try:
        wait_for(lambda: writers_writing(out, run), run)
        seen = {p.pid for p in psutil.Process(run.pid).children(recursive=True)}
        os.kill(run.pid, signal.SIGKILL)
        run.wait(timeout=30)
        deadline, alive = time.monotonic() + 10, seen
        while alive and time.monotonic() < deadline:
            alive = {p for p in seen if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE}
            time.sleep(0.05)
        assert not alive, [psutil.Process(p).cmdline() for p in alive]
    finally:
        run.kill()
        run.wait()


def test_a_sigkilled_writer_stops_the_run_in_one_line(cache, tmp_path):
    out = tmp_path / "run"
    run = start(slow_writer_script(tmp_path / "train.py", argv(cache, out, steps=2)[4:]))
    try:
        victim = wait_for(lambda: writers_writing(out, run), run)[0].pid
        clock = time.monotonic()
        os.kill(victim, signal.SIGKILL)  # as the OOM killer would
        err = run.communicate(timeout=60)[1].strip().splitlines()[-1]
        assert time.monotonic() - clock < 30  # seconds, on a loaded machine; it hung forever before
    finally:
        run.kill()
        run.wait()
    assert run.returncode == 2
    assert err.startswith("erl-mega: checkpoint ") and ".step_000001.tmp not written" in err, err
    assert f"writer worker pid {victim} was killed by SIGKILL" in err and "no checkpoint stays the latest" in err
    assert not list(out.glob(".step_*")) and not (out / "latest").exists()


def test_five_kill_9s_then_resume_give_the_uninterrupted_metrics(cache, tmp_path):
    steps = 8  # room: a kill lands before the run ends on its own
    straight = tmp_path / "straight"
    subprocess.run(argv(cache, straight, steps=steps), check=True, capture_output=True, timeout=600, env=ONE_THREAD)
    out, rng = tmp_path / "killed", random.Random(0)
    for kill in range(5):
        run = start(argv(cache, out, steps=steps, resume="true"))
        # a random moment once the run has a checkpoint of its own (before one, resume has nothing to continue)
        done = len(metrics(out)) if (out / "latest").exists() else 0
        wait_for(lambda: (out / "latest").exists() and len(metrics(out)) > done, run)
        time.sleep(rng.uniform(0.0, 1.5))
        if run.poll() is None:
            run.kill()
        run.wait()
        assert run.returncode == -signal.SIGKILL, f"kill {kill + 1}: the run ended on its own"
    finished = subprocess.run(argv(cache, out, steps=steps, resume="true"), capture_output=True, text=True, timeout=600,
                              env=ONE_THREAD)
    assert finished.returncode == 0, finished.stderr
    rows = metrics(out)
    assert [r["step"] for r in rows] == list(range(1, steps + 1))  # no step twice, none missing
    assert comparable(rows) == comparable(metrics(straight))


def test_a_script_without_a_main_guard_trains_once(cache, tmp_path):
    marker = tmp_path / "imports.txt"
    script = tmp_path / "train_script.py"
    args = argv(cache, tmp_path / "run", steps=2)[4:]
    script.write_text(textwrap.dedent(f"""\
        import erl_mega.cli
        with open({str(marker)!r}, "a") as f:  # once per execution of this file
            f.write("ran\\n")
        erl_mega.cli.main(["train", *{args!r}])
        """))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=600, env=ONE_THREAD)
    assert done.returncode == 0, done.stderr
    assert marker.read_text() == "ran\n"  # a spawned worker would have re-imported the script and run it again
    assert [r["step"] for r in metrics(tmp_path / "run")] == [1, 2]
