"""python -m benchmarks.kernels.bench_group_advantages

Group-normalised advantages (GRPO mode) for N = 4096 / 16384 / 65536 samples in groups of 16 under
shuffled ids: `erl_mega.kernels.group_advantages` (one Triton launch, an O(N²) id-equality sweep) side by
side with the PyTorch reference `erl_mega.kernels.advantages.group_advantages` (unique + index_add and
a host sync). Median of --iters CUDA-event timings. Prints a table and, last, a line of JSON; appends
the table to benchmarks/RESULTS.md. Run from the repository root; needs CUDA.
"""

from __future__ import annotations

import argparse
import json

import torch

from benchmarks.kernels.harness import Measurement, append_results, fmt, markdown_table, measure, require_cuda
from erl_mega.kernels.advantages import group_advantages as group_advantages_reference
from erl_mega.kernels.dispatch import group_advantages

COMMAND = "python -m benchmarks.kernels.bench_group_advantages"
DEVICE = torch.device("cuda")
GROUP = 16


def _measure(samples: int, iters: int, warmup: int) -> list[Measurement]:
    """Ours and the reference on one shuffled batch of groups."""
    ids = (torch.arange(samples, device=DEVICE) // GROUP)[torch.randperm(samples, device=DEVICE)]
    rewards = torch.randint(0, 2, (samples,), device=DEVICE).float()

    def ours() -> None:
        group_advantages(rewards, ids)

    def reference() -> None:
        group_advantages_reference(rewards, ids)

    return [
        measure("erl-mega triton", ours, [], iters, warmup),
        measure("pytorch reference", reference, [], iters, warmup),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, nargs="+", default=[4096, 16384, 65536])
    parser.add_argument("--iters", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args()
    require_cuda(COMMAND)
    rows, records = [], []
    for samples in args.samples:
        results = _measure(samples, args.iters, args.warmup)
        for m in results:
            speedup = m.ms / results[0].ms if m.ms and results[0].ms else None
            rows.append([str(samples), m.method, fmt(m.ms * 1e3 if m.ms else None, ".0f"), fmt(speedup, ".2f"), m.note])
            records.append({"samples": samples, "method": m.method, "ms": m.ms, "note": m.note})
    body = f"GRPO mode, groups of {GROUP}, shuffled ids.\n\n" + markdown_table(
        ["N", "method", "median µs", "ours faster by", "note"], rows
    )
    print(body)
    append_results("bench_group_advantages", COMMAND, body)
    print(json.dumps({"benchmark": "group_advantages", "device": torch.cuda.get_device_name(), "results": records}))


if __name__ == "__main__":
    main()
