"""scripts/slurm/train.sbatch rendered for N nodes: a fake `srun` runs its command once per node, a fake `torchrun` records argv."""

import os
import subprocess
from pathlib import Path

import pytest

SBATCH = Path(__file__).resolve().parents[2] / "scripts" / "slurm" / "train.sbatch"

FAKES = {
    "scontrol": 'for i in $(seq 0 $((SLURM_NNODES - 1))); do echo "node$i"; done\n',
    "srun": 'for i in $(seq 0 $((SLURM_NNODES - 1))); do SLURM_NODEID=$i "$@" & done; wait\n',
    "torchrun": 'echo "$SLURM_NODEID $*" > "$RECORD/node$SLURM_NODEID"\n',
}


@pytest.mark.parametrize("nodes", [2, 4])
def test_sbatch_runs_one_torchrun_per_node_with_one_rendezvous(tmp_path, nodes):
    bin_dir, record = tmp_path / "bin", tmp_path / "record"
    bin_dir.mkdir(), record.mkdir()
    for name, body in FAKES.items():
        (bin_dir / name).write_text("#!/usr/bin/env bash\nset -eu\n" + body)
        (bin_dir / name).chmod(0o755)
    env = os.environ | {"PATH": f"{bin_dir}:{os.environ['PATH']}", "RECORD": str(record), "SLURM_NNODES": str(nodes),
                        "SLURM_JOB_NODELIST": f"node[0-{nodes - 1}]", "SLURM_JOB_ID": "77", "GPUS_PER_NODE": "4"}
    done = subprocess.run(["bash", str(SBATCH), "trainer.tp=8", "env=sokoban"], env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    lines = sorted(p.read_text().strip() for p in record.iterdir())
    assert [line.split()[0] for line in lines] == [str(i) for i in range(nodes)]
    expected = (f"--nnodes {nodes} --nproc-per-node 4 --rdzv-backend c10d --rdzv-endpoint node0:29500 "
                "--rdzv-id 77 -m erl_mega train trainer.tp=8 env=sokoban")
    assert {line.split(" ", 1)[1] for line in lines} == {expected}
