"""python benchmarks/rollout/bench_async.py [--steps 6 --servers 2 --async-steps 1] [overrides, e.g. tasks_per_step=4]

Synchronous vs asynchronous ERL (`trainer.async_steps`), each a real `erl-mega train` process with its
rollouts on `--servers` embedded servers placed apart (rollout.placement=disaggregated, weights by gloo
broadcast), the quick start's policy and environment otherwise. From each run's metrics.jsonl, over
steps 2.. (step 1 warms up):
  wall time per step     mean `time_step` (collect or wait, train, push, log);
  trainer idle fraction  time the trainer waited for its batch (sync: the whole collection) / wall time;
  rollout idle fraction  1 - time spent collecting / wall time (the servers idle while nothing collects).
Prints a table and a last line of JSON; the load average before and after, as the machine may be shared.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from tempfile import TemporaryDirectory


def run(out: Path, steps: int, servers: int, async_steps: int, overrides: list[str]) -> dict[str, float]:
    args = ["rollout=server", f"rollout.num_servers={servers}", "rollout.placement=disaggregated",
            f"trainer.async_steps={async_steps}", f"steps={steps}", "checkpoint_every=0", "eval_tasks=4",
            "plot=false", f"out_dir={out}", *overrides]
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "erl_mega", "train", *args], check=True, stdout=subprocess.DEVNULL,
                   env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")})
    total = time.perf_counter() - start
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()][1:]
    wall = sum(r["time_step"] for r in rows)
    waited = sum(r["time_wait_rollout"] if async_steps else r["time_rollout"] for r in rows)
    collecting = sum(r["time_rollout"] for r in rows)
    return {"step_seconds": wall / len(rows), "trainer_idle": waited / wall, "rollout_idle": max(0.0, 1 - collecting / wall),
            "train_seconds": sum(r["time_train"] for r in rows) / len(rows), "run_seconds": total,
            "staleness_mean": sum(r.get("staleness_mean", 0.0) for r in rows) / len(rows)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--servers", type=int, default=2)
    parser.add_argument("--async-steps", type=int, default=1)
    args, overrides = parser.parse_known_args()
    load_before = os.getloadavg()
    with TemporaryDirectory() as tmp:
        results = {f"async_steps={k}": run(Path(tmp) / f"k{k}", args.steps, args.servers, k, overrides)
                   for k in (0, args.async_steps)}
    load_after = os.getloadavg()
    sync = results["async_steps=0"]["step_seconds"]
    print(f"{args.steps} steps, {args.servers} servers, load average {load_before[0]:.1f} before / {load_after[0]:.1f} after")
    print("| mode | wall s/step | vs sync | train s/step | trainer idle | rollout idle | staleness |\n|---|---|---|---|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {r['step_seconds']:.2f} | {sync / r['step_seconds']:.2f}x | {r['train_seconds']:.2f} | "
              f"{r['trainer_idle']:.0%} | {r['rollout_idle']:.0%} | {r['staleness_mean']:.2f} |")
    print(json.dumps({"steps": args.steps, "servers": args.servers, "load_before": load_before[0],
                      "load_after": load_after[0], "overrides": overrides, **results}))


if __name__ == "__main__":
    main()
