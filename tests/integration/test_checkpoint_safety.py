"""Checkpoints never hang, never half-publish and are never half-trusted: real writer processes, real signals.

A writer worker that raises (psutil missing, a file-size limit standing in for a full disk), is
SIGKILLed or hangs is one error naming the checkpoint and the cause within seconds; the temp
directory is gone and the previous checkpoint stays the latest. A damaged latest checkpoint is
named and `resume_point` falls back to the newest intact one; a run state that disagrees with its
directory or the metrics is refused.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import threading
import time

import psutil
import pytest
from transformers import AutoConfig, AutoModelForCausalLM

from erl_mega.algo.memory import ReflectionMemory
from erl_mega.kernels.losses import PolicyLossConfig
from erl_mega.train import shard_writer
from erl_mega.train.checkpoint import CheckpointError, load_checkpoint, resume_point, save_checkpoint
from erl_mega.train.megatron_trainer import LossConfig, MegatronTrainer
from erl_mega.train.trainer import TrainerConfig

pytestmark = pytest.mark.slow  # ~90 s: a megatron trainer saves and loads two dozen checkpoints

SHAPE = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
             intermediate_size=128, vocab_size=256, max_position_embeddings=64)


@pytest.fixture(scope="module")
def trainer(megatron_parallel, tmp_path_factory):
    path = tmp_path_factory.mktemp("policy")
    AutoModelForCausalLM.from_config(AutoConfig.for_model("qwen2", **SHAPE)).save_pretrained(path)
    return MegatronTrainer(path, TrainerConfig(lr=1e-3, micro_batch_size=2), LossConfig(PolicyLossConfig()))


def save(out, step, trainer):
    return save_checkpoint(out, step, trainer, ReflectionMemory(4), {"env_steps": step})


def run_with_metrics(out, trainer, steps):
    """A run directory as `erl-mega train` leaves it: metrics for every step, a checkpoint after each."""
    out.mkdir()
    for step in range(1, steps + 1):
        with (out / "metrics.jsonl").open("a") as f:
            f.write(json.dumps({"step": step, "loss": 0.1 * step}) + "\n")
        save(out, step, trainer)


def assert_failed_cleanly(err, out, cause):
    message = str(err.value)
    assert "\n" not in message and ".step_000002.tmp" in message and cause in message, message
    assert "step_000001 stays the latest" in message
    assert not (out / ".step_000002.tmp").exists() and not (out / "step_000002").exists()
    assert (out / "latest").read_text() == "step_000001"
    assert resume_point(out) == out / "step_000001"


def slow_writes(monkeypatch, seconds=60.0):
    """Every shard write (in the forked workers, which inherit this) waits `seconds` after opening its file."""
    from megatron.core.dist_checkpointing.strategies import filesystem_async

    real = filesystem_async._write_item
    monkeypatch.setattr(filesystem_async, "_write_item", lambda *a, **k: (time.sleep(seconds), real(*a, **k))[1])


def writer_children():
    """The checkpoint's forked writer workers: children running this process's own command line (servers,
    torch's shm manager and other tests' subprocesses exec'd something else)."""
    me = psutil.Process()
    alive = [c for c in me.children() if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
    return [c for c in alive if _cmdline(c) == me.cmdline()]


def _cmdline(process: psutil.Process) -> list[str] | None:
    try:
        return process.cmdline()
    except psutil.Error:  # it ended meanwhile
        return None


def test_a_raising_writer_without_psutil_is_one_line(trainer, tmp_path, monkeypatch):
    from megatron.core.dist_checkpointing.strategies import filesystem_async

    run_with_metrics(tmp_path / "run", trainer, 1)
    monkeypatch.setattr(filesystem_async, "HAVE_PSUTIL", False)  # the fresh-install failure: psutil not there
    with pytest.raises(CheckpointError) as err:
        save(tmp_path / "run", 2, trainer)
    assert_failed_cleanly(err, tmp_path / "run", "psutil is not installed")


def test_a_full_disk_is_one_line(trainer, tmp_path):
    run_with_metrics(tmp_path / "run", trainer, 1)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, hard))  # a shard is ~860 KB: its write fails (EFBIG)
    try:
        with pytest.raises(CheckpointError) as err:
            save(tmp_path / "run", 2, trainer)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    # torch's zip writer hides the EFBIG / ENOSPC behind this; the free space beside it tells which
    assert_failed_cleanly(err, tmp_path / "run", "unexpected pos")
    assert "MiB free there" in str(err.value)


def test_a_sigkilled_writer_worker_is_one_line_within_seconds(trainer, tmp_path, monkeypatch):
    run_with_metrics(tmp_path / "run", trainer, 1)
    slow_writes(monkeypatch)
    killed = []

    def kill_a_writer():  # as the OOM killer would
        while not killed:
            for child in writer_children():
                os.kill(child.pid, signal.SIGKILL)
                killed.append(child.pid)
                break
            time.sleep(0.01)

    threading.Thread(target=kill_a_writer, daemon=True).start()
    clock = time.monotonic()
    with pytest.raises(CheckpointError) as err:
        save(tmp_path / "run", 2, trainer)
    assert time.monotonic() - clock < 10
    assert_failed_cleanly(err, tmp_path / "run", f"writer worker pid {killed[0]} was killed by SIGKILL")
    assert writer_children() == []  # the other worker was ended too


def test_a_hung_writer_worker_is_ended_and_said(trainer, tmp_path, monkeypatch):
    run_with_metrics(tmp_path / "run", trainer, 1)
    slow_writes(monkeypatch)
    monkeypatch.setattr(shard_writer, "STALL_S", 1.0)
    with pytest.raises(CheckpointError) as err:
        save(tmp_path / "run", 2, trainer)
    assert_failed_cleanly(err, tmp_path / "run", "wrote nothing for 1 s")
    assert writer_children() == []


def flip_byte(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def edit_state_step(path):
    state = json.loads(path.read_text())
    path.write_text(json.dumps(state | {"step": 1}))


DAMAGES = {  # name: (file under the run dir, how it is damaged, what the message names)
    "truncated shard": ("step_000002/trainer/__0_0.distcp", lambda p: p.write_bytes(p.read_bytes()[:1000]), "__0_0.distcp has 1000 bytes"),
    "deleted .metadata": ("step_000002/trainer/.metadata", os.remove, "trainer/.metadata is missing"),
    "deleted shard": ("step_000002/trainer/__0_1.distcp", os.remove, "trainer/__0_1.distcp is missing"),
    "flipped byte in a shard": ("step_000002/trainer/__0_1.distcp", flip_byte, "__0_1.distcp differs from its checksum"),
    "garbage memory": ("step_000002/memory.json", lambda p: p.write_text("{\"capac"), "memory.json has"),
    "garbage state": ("step_000002/state.json", lambda p: p.write_bytes(b"\x00" * p.stat().st_size), "state.json differs"),
    "edited state step": ("step_000002/state.json", edit_state_step, "state.json has"),
    "garbage RNG": ("step_000002/rng.pt", flip_byte, "rng.pt differs"),
    "no checksums": ("step_000002/checksums.json", os.remove, "checksums.json is missing"),
    "garbage checksums": ("step_000002/checksums.json", lambda p: p.write_text("[1"), "checksums.json is unreadable"),
    # the pointer, not a checkpoint, is damaged: the newest intact checkpoint is step_000002 itself
    "dangling latest": ("latest", lambda p: p.write_text("step_000009"), "latest names 'step_000009'"),
    "empty latest": ("latest", lambda p: p.write_text(""), "latest is empty"),
}


@pytest.fixture(scope="module")
def two_checkpoints(trainer, tmp_path_factory):
    pristine = tmp_path_factory.mktemp("pristine") / "run"
    run_with_metrics(pristine, trainer, 2)
    return pristine


@pytest.mark.parametrize("damage", DAMAGES)
def test_a_damaged_latest_checkpoint_is_named_and_the_newest_intact_one_resumes(
        damage, trainer, two_checkpoints, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(two_checkpoints, out)
    name, how, said = DAMAGES[damage]
    how(out / name)
    step = 2 if name == "latest" else 1
    assert resume_point(out) == out / f"step_00000{step}"
    line = capsys.readouterr().err.strip()
    assert "\n" not in line and line.startswith(f"erl-mega: resuming from step_00000{step}") and said in line, line
    memory, state = load_checkpoint(out / f"step_00000{step}", trainer)
    assert state["step"] == step and trainer.version == 0


def test_no_intact_checkpoint_is_one_line(two_checkpoints, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(two_checkpoints, out)
    for step in (1, 2):
        os.remove(out / f"step_00000{step}/trainer/.metadata")
    with pytest.raises(CheckpointError, match="no intact checkpoint to resume: step_000002 is damaged .*step_000001 is damaged"):
        resume_point(out)


def test_a_step_that_disagrees_with_its_directory_is_refused(two_checkpoints, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(two_checkpoints, out)
    os.rename(out / "step_000002", out / "step_000005")  # intact files, but step-2 weights "at step 5"
    (out / "latest").write_text("step_000005")
    with pytest.raises(CheckpointError, match="state.json says step 2 but the checkpoint is step_000005"):
        resume_point(out)


def test_a_step_that_disagrees_with_the_metrics_is_refused(two_checkpoints, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(two_checkpoints, out)
    (out / "metrics.jsonl").write_text('{"step": 1, "loss": 0.1}\n')  # the log of a shorter run
    with pytest.raises(CheckpointError, match=r"holds steps 1..1 \(1 lines\) up to step_000002, not steps 1..2"):
        resume_point(out)
