"""python benchmarks/bench_packing.py

Sequence packing and data-parallel balancing: the C++ core (csrc/packing.cpp, through
erl_mega.train.packing.pack_sequences) against the plain-Python reference, on RL-like lengths
(log-normal, median ~1.1k tokens, long tail clipped at 16k) with 16k-token micro-batches. Both return
the identical plan (checked), so the ratio prices the same work; imbalance is the most loaded rank's
cost over the lower bound max(mean rank cost, largest sequence cost). Times are CPU seconds
(time.process_time), best of several runs.
"""

from __future__ import annotations

import json
import time

import numpy as np

from erl_mega.train.packing import balance_lower_bound, pack_sequences, pack_sequences_reference, rank_costs

MAX_TOKENS = 16384
CASES = [(10_000, 8, 0.0), (100_000, 8, 0.0), (100_000, 64, 0.0), (100_000, 8, 1e-4)]  # (sequences, dp, weight)


def best_seconds(run, repeats: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeats):
        start = time.process_time()
        out = run()
        best = min(best, time.process_time() - start)
    return best, out


def main() -> None:
    rows = []
    print(f"{'seqs':>7} {'dp':>3} {'attn w':>7} {'C++ ms':>8} {'Python ms':>10} {'C++ / Python':>13} "
          f"{'micro-batches':>13} {'imbalance':>10}")
    for n, dp, weight in CASES:
        lengths = np.clip(np.random.default_rng(n + dp).lognormal(7, 1, n), 1, MAX_TOKENS).astype(np.int64)
        kwargs = dict(max_tokens=MAX_TOKENS, dp_size=dp, attention_weight=weight)
        cpp, plan = best_seconds(lambda: pack_sequences(lengths, **kwargs), 7)
        python, reference = best_seconds(lambda: pack_sequences_reference(lengths, **kwargs), 2)
        assert all(np.array_equal(getattr(plan, f), getattr(reference, f)) for f in ("order", "offsets", "cu_seqlens"))
        imbalance = max(rank_costs(plan, lengths, weight)) / balance_lower_bound(lengths, dp, weight) - 1
        rows.append({"sequences": n, "dp_size": dp, "attention_weight": weight, "cpp_ms": round(cpp * 1e3, 1),
                     "python_ms": round(python * 1e3, 1), "speedup": round(python / cpp, 1),
                     "micro_batches_per_rank": plan.num_micro_batches, "imbalance_pct": round(100 * imbalance, 6)})
        print(f"{n:>7} {dp:>3} {weight:>7g} {cpp * 1e3:>8.1f} {python * 1e3:>10.1f} {python / cpp:>12.1f}x "
              f"{plan.num_micro_batches:>13} {100 * imbalance:>9.4f}%")
    print(json.dumps({"bench": "packing", "max_tokens": MAX_TOKENS, "rows": rows}))


if __name__ == "__main__":
    main()
