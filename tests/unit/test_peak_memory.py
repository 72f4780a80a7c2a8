"""Peak memory per phase: each phase reports its own high-water mark, not the process's lifetime peak."""

from __future__ import annotations

import mmap
import subprocess
import sys

import pytest

from erl_mega.peak_memory import PhaseMemory

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")


def test_each_phase_reports_its_own_peak():
    metrics: dict[str, float] = {}
    memory = PhaseMemory()
    with memory.phase("big", metrics):
        block = mmap.mmap(-1, 300 << 20)  # fresh pages (a malloc could reuse resident ones), each touched
        for offset in range(0, len(block), mmap.PAGESIZE):
            block[offset] = 1
        block.close()
    with memory.phase("small", metrics):
        pass
    assert metrics["mem_big_trainer_mb"] > metrics["mem_small_trainer_mb"] + 250


def test_server_processes_are_summed():
    code = "import time; b = bytearray(100 << 20); print('ready', flush=True); time.sleep(60)"
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "ready"
        metrics: dict[str, float] = {}
        with PhaseMemory(lambda: [child.pid, child.pid]).phase("rollout", metrics):
            pass
        assert metrics["mem_rollout_rollout_mb"] > 2 * 100
    finally:
        child.kill()
        child.wait()
