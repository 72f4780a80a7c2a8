"""The output directory: checked before any work, one run at a time, another run's files never reused silently."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from erl_mega.run_dir import RunDirError, RunLock, check_out_dir, claim_for_run


def test_a_file_or_an_unwritable_out_dir_is_one_line(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(RunDirError, match="is a file, not a directory"):
        check_out_dir(tmp_path / "f")
    if os.geteuid() != 0:  # root writes through permission bits
        locked = tmp_path / "ro"
        locked.mkdir(mode=0o500)
        with pytest.raises(RunDirError, match="cannot write in"):
            check_out_dir(locked / "run")


def test_a_fresh_run_refuses_another_runs_files_unless_overwrite(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\n')
    (tmp_path / "latest").write_text("step_000001")
    with pytest.raises(RunDirError, match="holds another run .*resume=true.*overwrite=true"):
        claim_for_run(tmp_path, resume=False, overwrite=False)
    claim_for_run(tmp_path, resume=True, overwrite=False)  # continuing it is what resume means
    assert (tmp_path / "metrics.jsonl").exists()
    claim_for_run(tmp_path, resume=False, overwrite=True)
    assert not (tmp_path / "metrics.jsonl").exists() and not (tmp_path / "latest").exists()


def test_resume_without_a_checkpoint_still_refuses_a_populated_dir(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\n')  # a log but no `latest`: splicing would follow
    with pytest.raises(RunDirError, match="holds another run"):
        claim_for_run(tmp_path, resume=True, overwrite=False)


def test_a_second_run_refuses_a_live_holder_and_takes_over_a_dead_ones_lock(tmp_path, capsys):
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / ".lock").write_text(json.dumps({"pid": holder.pid, "host": socket.gethostname()}))
        with pytest.raises(RunDirError, match=f"in use by pid {holder.pid}"):
            RunLock(tmp_path).__enter__()
    finally:
        holder.kill()
        holder.wait()
    with RunLock(tmp_path):  # the holder is gone: its lock is stale, taken over and said
        assert json.loads((tmp_path / ".lock").read_text())["pid"] == os.getpid()
    assert "stale lock" in capsys.readouterr().err
    assert not (tmp_path / ".lock").exists()


def test_cli_out_dir_that_is_a_file_exits_2_in_one_line(tmp_path):
    (tmp_path / "f").write_text("x")
    out = subprocess.run([sys.executable, "-m", "erl_mega", "train", f"out_dir={tmp_path / 'f'}"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0 and "is a file, not a directory" in out.stderr, out.stderr
