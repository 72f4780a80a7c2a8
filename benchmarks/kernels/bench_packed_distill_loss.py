"""python -m benchmarks.kernels.bench_packed_distill_loss

Forward + backward of the weighted distillation cross-entropy over packed sequences (H = 4096,
V = 151936, bf16, N = 4096 / 16384 / 32768 tokens in ragged sequences of 256..1792 tokens):
`erl_mega.kernels.packed_distill_loss` (Triton on CUDA) side by side with the PyTorch reference the tests
hold it to (eager, and under torch.compile) and Liger-Kernel's fused linear cross-entropy
(optional: `pip install liger-kernel`; unweighted, over the same tokens). Median of --iters
CUDA-event timings, peak memory above the inputs, and time as a multiple of the 6·N·H·V floor at
the bf16 GEMM rate measured in this run. Prints a table and, last, a line of JSON; appends the table
to benchmarks/RESULTS.md. Run from the repository root; needs CUDA.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable

import torch

from benchmarks.kernels.harness import (
    SIDE_BY_SIDE_HEADER,
    append_results,
    bf16_gemm_tflops,
    markdown_table,
    measure_all,
    require_cuda,
    side_by_side,
)
from erl_mega.kernels.dispatch import packed_distill_loss
from erl_mega.kernels.reference import packed_distill_loss_reference

COMMAND = "python -m benchmarks.kernels.bench_packed_distill_loss"
DEVICE = torch.device("cuda")
WIDTH, VOCAB = 4096, 151936
LENGTHS = (256, 1792, 1024, 512, 1536, 1024)  # cycled until N tokens are packed: mean 1024


def _batch(tokens: int) -> dict[str, torch.Tensor]:
    """N packed tokens of ragged sequences, the prompt quarter of each masked out, weights in [0.5, 1.5]."""
    lengths, total = [], 0
    while total < tokens:
        lengths.append(min(LENGTHS[len(lengths) % len(LENGTHS)], tokens - total))
        total += lengths[-1]
    cu_seqlens = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], device=DEVICE)
    position = torch.cat([torch.arange(n, device=DEVICE) for n in lengths])
    length = torch.cat([torch.full((n,), n, device=DEVICE) for n in lengths])
    return {
        "hidden": torch.randn(tokens, WIDTH, device=DEVICE, dtype=torch.bfloat16).requires_grad_(),
        "weight": (torch.randn(VOCAB, WIDTH, device=DEVICE) * (2.0 / WIDTH**0.5)).bfloat16().requires_grad_(),
        "targets": torch.randint(0, VOCAB, (tokens,), device=DEVICE),
        "mask": (position >= length // 4).float(),
        "cu_seqlens": cu_seqlens,
        "seq_weights": 0.5 + torch.rand(len(lengths), device=DEVICE),
    }


def _methods(b: dict[str, torch.Tensor], compiled: Callable) -> dict[str, Callable | str]:
    """Method name -> step returning the loss, or -> why it cannot run."""
    args = (b["hidden"], b["weight"], b["targets"], b["mask"], b["cu_seqlens"], b["seq_weights"])
    methods: dict[str, Callable | str] = {
        "erl-mega triton": lambda: packed_distill_loss(*args),
        "pytorch eager": lambda: packed_distill_loss_reference(*args),
        "torch.compile": lambda: compiled(*args),
    }
    try:
        from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss
    except ImportError as missing:
        return methods | {"liger flce": f"not installed ({missing.name}): pip install liger-kernel"}
    flce = LigerFusedLinearCrossEntropyLoss(ignore_index=-100)
    targets = b["targets"].masked_fill(b["mask"] == 0, -100)
    return methods | {"liger flce": lambda: flce(b["weight"], b["hidden"], targets)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, nargs="+", default=[4096, 16384, 32768])
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args()
    require_cuda(COMMAND)
    tflops = bf16_gemm_tflops(WIDTH, VOCAB)
    compiled = torch.compile(packed_distill_loss_reference)
    rows, records = [], []
    for tokens in args.tokens:
        batch = _batch(tokens)
        floor_ms = 6 * tokens * WIDTH * VOCAB / (tflops * 1e12) * 1e3
        results = list(measure_all(_methods(batch, compiled), [batch["hidden"], batch["weight"]], args.iters, args.warmup).values())
        table, recs = side_by_side(tokens, results, results[0], floor_ms)
        rows += table
        records += recs
        del batch
        torch.cuda.empty_cache()
    body = "\n".join(
        [
            f"H={WIDTH}, V={VOCAB}, bf16; floor 6·N·H·V at {tflops:.0f} TFLOP/s (bf16 GEMM, measured in this run).",
            "",
            markdown_table(SIDE_BY_SIDE_HEADER, rows),
        ]
    )
    print(body)
    append_results("bench_packed_distill_loss", COMMAND, body)
    print(
        json.dumps(
            {
                "benchmark": "packed_distill_loss",
                "device": torch.cuda.get_device_name(),
                "gemm_tflops": tflops,
                "results": records,
            }
        )
    )


if __name__ == "__main__":
    main()
