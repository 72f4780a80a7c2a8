"""Two "nodes" on one machine: scripts/slurm/train.sbatch as documented, a fake `srun` starting one real torchrun
agent per node, a c10d rendezvous on loopback, and the ERL loop with TP=2 across the node boundary (1 rank per node)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from harness import TINY, free_port

pytestmark = pytest.mark.slow

SBATCH = Path(__file__).resolve().parents[2] / "scripts" / "slurm" / "train.sbatch"

FAKES = {
    "scontrol": "echo 127.0.0.1\n",  # the head node's address: loopback
    # one agent per node, each logging to its own file; fails if any node's agent fails
    "srun": ('pids=(); for i in $(seq 0 $((SLURM_NNODES - 1))); do\n'
             '  SLURM_NODEID=$i "$@" > "$LOGS/node$i.log" 2>&1 & pids+=($!)\ndone\n'
             'for p in "${pids[@]}"; do wait "$p"; done\n'),
    "torchrun": f'exec {sys.executable} -m torch.distributed.run "$@"\n',  # what the console script runs
}


def test_erl_loop_on_two_torchrun_agents_with_tp_across_them(tmp_path):
    bin_dir, out = tmp_path / "bin", tmp_path / "out"
    bin_dir.mkdir()
    for name, body in FAKES.items():
        (bin_dir / name).write_text("#!/usr/bin/env bash\nset -eu\n" + body)
        (bin_dir / name).chmod(0o755)
    env = os.environ | {"PATH": f"{bin_dir}:{os.environ['PATH']}", "LOGS": str(tmp_path), "SLURM_NNODES": "2",
                        "SLURM_JOB_NODELIST": "node[0-1]", "SLURM_JOB_ID": "41", "GPUS_PER_NODE": "1",
                        "MASTER_PORT": str(free_port()), "LOGLEVEL": "INFO", "OMP_NUM_THREADS": "1"}
    args = ["trainer.tp=2", "steps=1", f"model.cache_dir={tmp_path / 'cache'}", f"out_dir={out}", *TINY]
    done = subprocess.run(["bash", str(SBATCH), *args], env=env, capture_output=True, text=True, timeout=300)
    logs = [(tmp_path / f"node{i}.log").read_text() for i in range(2)]
    assert done.returncode == 0, done.stderr[-2000:] + "".join(log[-2000:] for log in logs)
    for node, log in enumerate(logs):  # the rendezvous gave each agent one rank of the world of two
        assert f"group_rank={node}" in log and f"global_ranks=[{node}]" in log
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1]
    assert rows[0]["logprob_gap_mean"] < 1e-4 and rows[0]["sync_bytes"] > 0
    # both TP ranks (one per node) wrote their shards of megatron's distributed checkpoint
    shards = {p.name.split("_")[2] for p in (out / "step_000001" / "trainer").glob("*.distcp")}
    assert shards == {"0", "1"}
    assert "after 1 erl steps" in logs[0]
