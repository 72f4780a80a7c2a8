"""The ERL loop under torchrun with TP=2 on gloo: the leader rolls out, both ranks train in lockstep."""

import json
import subprocess
import sys

import pytest
from harness import TINY

pytestmark = pytest.mark.slow


def test_erl_loop_under_torchrun_tp2(tmp_path):
    out = tmp_path / "out"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "-m", "erl_mega", "train",
        "trainer.tp=2", "steps=2", "checkpoint_every=1", f"model.cache_dir={tmp_path / 'cache'}", f"out_dir={out}", *TINY,
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    assert all(r["logprob_gap_mean"] < 1e-4 and r["sync_bytes"] > 0 for r in rows)
    trainer = out / "step_000002" / "trainer"  # megatron's distributed checkpoint: both TP ranks wrote
    assert (trainer / "metadata.json").exists() and {p.name.split("_")[2] for p in trainer.glob("*.distcp")} == {"0", "1"}
    assert "after 2 erl steps" in done.stdout
