"""Measuring helpers shared by the kernel benchmarks: CUDA-event timing, peak memory, the bf16 GEMM
rate behind the 6·N·H·V floor, and the dated entry each run appends to benchmarks/RESULTS.md."""

from __future__ import annotations

import datetime
import gc
import statistics
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parents[1] / "RESULTS.md"


@dataclass(frozen=True)
class Measurement:
    """One method at one size: median time, peak memory above the inputs, or why it did not run."""

    method: str
    ms: float | None  # median milliseconds of one step (forward + backward)
    peak_gib: float | None  # peak allocated during one step minus what was allocated before it
    note: str = ""  # "OOM", "not installed: ...", "error: ..."


def require_cuda(script: str) -> None:
    """Exit with a clear message on a machine without CUDA (the kernels' timings mean nothing there)."""
    if not torch.cuda.is_available():
        sys.exit(f"{script} needs a CUDA GPU (the reference numbers are from an H100); none is visible.")


def _clear(leaves: list[torch.Tensor]) -> None:
    for leaf in leaves:
        leaf.grad = None


def measure(
    method: str, step: Callable[[], torch.Tensor | None], leaves: list[torch.Tensor], iters: int, warmup: int
) -> Measurement:
    """Time `step` (returns a loss to backward, or None when it is forward-only) with CUDA events.

    Gradients of `leaves` are dropped before every step, so each step allocates them afresh and the
    peak counts them, as it does for every method.
    """

    def run() -> None:
        loss = step()
        if loss is not None:
            loss.backward()

    try:
        for _ in range(warmup):  # includes torch.compile's compilation and Triton's JIT
            _clear(leaves)
            run()
        _clear(leaves)
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        run()
        torch.cuda.synchronize()
        peak = (torch.cuda.max_memory_allocated() - base) / 2**30
        times = []
        for _ in range(iters):
            _clear(leaves)
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            run()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        return Measurement(method, statistics.median(times), peak)
    except torch.cuda.OutOfMemoryError:
        return Measurement(method, None, None, "OOM")
    except Exception as error:  # an optional competitor's API drift must not hide the other rows
        traceback.print_exc()
        return Measurement(method, None, None, f"error: {type(error).__name__}")
    finally:
        _clear(leaves)
        gc.collect()
        torch.cuda.empty_cache()


def _gemm_tflops(m: int, k: int, n: int, iters: int) -> float:
    a = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(k, n, device="cuda", dtype=torch.bfloat16)

    def matmul() -> None:
        torch.mm(a, b)

    return 2 * m * k * n / (measure("gemm", matmul, [], iters, warmup=3).ms * 1e-3) / 1e12


def bf16_gemm_tflops(width: int, vocab: int, iters: int = 20) -> float:
    """Best bf16 GEMM rate (TFLOP/s) of the lm-head shape [4096, H] @ [H, V] and a square 8192³."""
    return max(_gemm_tflops(4096, width, vocab, iters), _gemm_tflops(8192, 8192, 8192, iters))


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    """A GitHub markdown table, printed to the terminal and appended to RESULTS.md alike."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def append_results(title: str, command: str, body: str) -> None:
    """Append a dated entry naming the device and the command to benchmarks/RESULTS.md."""
    import triton

    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    versions = f"torch {torch.__version__}, triton {triton.__version__}, CUDA {torch.version.cuda}"
    entry = f"\n## {stamp} · {title} · {torch.cuda.get_device_name()}\n\n`{command}` ({versions})\n\n{body}\n"
    with RESULTS.open("a") as results:
        results.write(entry)
    print(f"appended to {RESULTS}")


def fmt(value: float | None, spec: str) -> str:
    """Format a number for the table; a dash where the method did not run."""
    return "—" if value is None else format(value, spec)


def side_by_side(tokens: int, results: list[Measurement], ours: Measurement, floor_ms: float) -> tuple[list[list[str]], list[dict]]:
    """Table rows and JSON records for one size: each method's time, multiple of the floor, speed-up and memory vs ours."""
    rows, records = [], []
    for m in results:
        speedup = m.ms / ours.ms if m.ms and ours.ms else None
        memory = ours.peak_gib / m.peak_gib if m.peak_gib and ours.peak_gib else None
        x_floor = m.ms / floor_ms if m.ms else None
        rows.append([str(tokens), m.method, fmt(m.ms, ".1f"), fmt(x_floor, ".2f"), fmt(speedup, ".2f"),
                     fmt(m.peak_gib, ".2f"), fmt(memory, ".3f"), m.note])
        records.append({"tokens": tokens, "method": m.method, "ms": m.ms, "x_floor": x_floor,
                        "peak_gib": m.peak_gib, "note": m.note})
    return rows, records


SIDE_BY_SIDE_HEADER = ["N", "method", "fwd+bwd ms", "x floor", "ours faster by", "peak GiB", "ours/its memory", "note"]


def measure_all(
    methods: dict[str, Callable[[], torch.Tensor | None] | str], leaves: list[torch.Tensor], iters: int, warmup: int
) -> dict[str, Measurement]:
    """Measure every method; a string instead of a step is why that method could not run."""
    return {
        name: Measurement(name, None, None, step) if isinstance(step, str) else measure(name, step, leaves, iters, warmup)
        for name, step in methods.items()
    }
