"""Sequence packing: balance sequences across data-parallel ranks, then pack each rank's into micro-batches.

Ranks are balanced on cost `len + attention_weight * len**2` (0 balances tokens; a positive weight also
balances attention's quadratic work) by the Karmarkar-Karp largest differencing method. Each rank's
sequences then go, longest first, into the least-filled of M micro-batches of at most `max_tokens`
tokens, M the same on every rank (a pipeline schedule runs one count on all ranks) and the smallest
found by bisection. `pack_sequences` runs the C++ core (csrc/packing.cpp); `pack_sequences_reference`
is the same algorithm in plain Python, tie for tie, for the tests and the benchmark.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from erl_mega import native


@dataclass(frozen=True, eq=False)
class MicroBatch:
    """Sequences run back to back in one forward pass (variable-length attention); views into a PackPlan."""

    indices: np.ndarray  # [k] int64 positions in the input lengths, in packing order
    cu_seqlens: np.ndarray  # [k + 1] int64: 0, then the running token count

    @property
    def num_tokens(self) -> int:
        """Tokens in the micro-batch."""
        return int(self.cu_seqlens[-1])


@dataclass(frozen=True, eq=False)
class PackPlan:
    """Micro-batches per data-parallel rank, the same number on every rank, as three flat int64 arrays."""

    order: np.ndarray  # [n] sequence indices, rank by rank, micro-batch by micro-batch
    offsets: np.ndarray  # [dp_size * num_micro_batches + 1] where each micro-batch starts in `order`
    cu_seqlens: np.ndarray  # [n + dp_size * num_micro_batches] micro-batch j's at [offsets[j] + j, offsets[j + 1] + j]
    dp_size: int

    @property
    def num_micro_batches(self) -> int:
        """Micro-batches per rank."""
        return (len(self.offsets) - 1) // self.dp_size

    def micro_batches(self, rank: int) -> list[MicroBatch]:
        """The micro-batches of data-parallel rank `rank`."""
        if not 0 <= rank < self.dp_size:
            raise ValueError(f"rank={rank}; must be in [0, dp_size={self.dp_size})")
        m, offsets = self.num_micro_batches, self.offsets.tolist()
        return [
            MicroBatch(self.order[offsets[j] : offsets[j + 1]], self.cu_seqlens[offsets[j] + j : offsets[j + 1] + j + 1])
            for j in range(rank * m, (rank + 1) * m)
        ]

    def rank_sequences(self, rank: int) -> np.ndarray:
        """Every sequence index that rank `rank` trains on."""
        m = self.num_micro_batches
        return self.order[self.offsets[rank * m] : self.offsets[(rank + 1) * m]]


def pack_sequences(
    lengths: Sequence[int] | np.ndarray, *, max_tokens: int, dp_size: int, attention_weight: float = 0.0
) -> PackPlan:
    """Balance and pack sequences of `lengths` tokens (C++)."""
    values = _check(lengths, max_tokens, dp_size, attention_weight)
    order, offsets, cu_seqlens = native.pack_sequences(values, max_tokens, dp_size, attention_weight)
    return PackPlan(order, offsets, cu_seqlens, dp_size)


def pack_sequences_reference(
    lengths: Sequence[int] | np.ndarray, *, max_tokens: int, dp_size: int, attention_weight: float = 0.0
) -> PackPlan:
    """`pack_sequences` in plain Python: the same plan, tie for tie."""
    lens = _check(lengths, max_tokens, dp_size, attention_weight).tolist()
    costs = [n + attention_weight * n * n for n in lens]
    order = sorted(range(len(lens)), key=costs.__getitem__, reverse=True)  # stable: ties by index
    rank_of = _balance_ranks(costs, order, dp_size)
    ranks: list[list[int]] = [[] for _ in range(dp_size)]
    for item in order:  # longest first within each rank: cost grows with length
        ranks[rank_of[item]].append(item)
    lo = max(-(-sum(lens[i] for i in items) // max_tokens) for items in ranks)
    hi = max(len(items) for items in ranks)
    packed = _fill_all(ranks, lens, max_tokens, lo)
    fails = fits = lo
    step = 1
    while packed is None:  # gallop up from the lower bound; `hi` (one sequence each) always fits
        fails, fits = fits, min(fits + step, hi)
        packed = _fill_all(ranks, lens, max_tokens, fits)
        step *= 2
    while fails + 1 < fits:  # then bisect (fails, fits]
        mid = (fails + fits) // 2
        trial = _fill_all(ranks, lens, max_tokens, mid)
        if trial is None:
            fails = mid
        else:
            fits, packed = mid, trial
    order, offsets, cu_seqlens = [], [0], []
    for bins in packed:
        for items in bins:
            cu_seqlens.append(0)
            for item in items:
                order.append(item)
                cu_seqlens.append(cu_seqlens[-1] + lens[item])
            offsets.append(len(order))
    return PackPlan(*(np.asarray(a, dtype=np.int64) for a in (order, offsets, cu_seqlens)), dp_size)


def rank_costs(plan: PackPlan, lengths: Sequence[int] | np.ndarray, attention_weight: float = 0.0) -> list[float]:
    """Total cost `len + attention_weight * len**2` that each rank received."""
    cost = np.asarray(lengths, dtype=np.float64)
    cost = cost + attention_weight * cost * cost
    return [float(cost[plan.rank_sequences(rank)].sum()) for rank in range(plan.dp_size)]


def balance_lower_bound(lengths: Sequence[int] | np.ndarray, dp_size: int, attention_weight: float = 0.0) -> float:
    """No split across `dp_size` ranks gives any rank less than this cost: max(mean rank cost, largest item)."""
    cost = np.asarray(lengths, dtype=np.float64)
    cost = cost + attention_weight * cost * cost
    return max(float(cost.sum()) / dp_size, float(cost.max(initial=0.0)))


def _check(lengths: Sequence[int] | np.ndarray, max_tokens: int, dp_size: int, attention_weight: float) -> np.ndarray:
    """The lengths as int64, after validating every argument at the boundary."""
    if dp_size < 1:
        raise ValueError(f"dp_size={dp_size}; must be >= 1")
    if not 1 <= max_tokens < 2**31:  # cu_seqlens are int32 in varlen attention kernels
        raise ValueError(f"max_tokens={max_tokens}; must be in [1, 2**31)")
    if not (math.isfinite(attention_weight) and attention_weight >= 0):
        raise ValueError(f"attention_weight={attention_weight}; must be finite and >= 0")
    values = np.asarray(lengths)
    if values.ndim != 1 or (values.size and values.dtype.kind not in "iu"):
        raise ValueError(f"lengths must be a flat sequence of integers; got shape {values.shape}, dtype {values.dtype}")
    if values.size >= 2**31:
        raise ValueError(f"lengths has {values.size} sequences; must be fewer than 2**31")
    values = values.astype(np.int64)
    bad = np.flatnonzero((values < 1) | (values > max_tokens))
    if bad.size:
        raise ValueError(f"lengths[{bad[0]}]={values[bad[0]]}; every length must be in [1, max_tokens={max_tokens}]")
    return values


def _balance_ranks(costs: list[float], order: list[int], k: int) -> list[int]:
    """Each sequence's rank by Karmarkar-Karp largest differencing; singletons enter lazily in `order`."""
    n = len(costs)
    rank_of = [0] * n
    if n == 0:
        return rank_of
    after = [-1] * n  # linked lists of sequence indices, one per subset
    heap: list[tuple[float, int, list[list]]] = []  # (-spread, id, subsets [sum, head, tail] largest first)
    next_single = 0

    def pop() -> list[list]:
        nonlocal next_single
        if next_single < n and (not heap or (-costs[order[next_single]], next_single) < heap[0][:2]):
            item = order[next_single]
            next_single += 1
            return [[costs[item], item, item]] + [[0.0, -1, -1] for _ in range(k - 1)]
        return heapq.heappop(heap)[2]

    part_id = n
    while (n - next_single) + len(heap) > 1:
        a, b = pop(), pop()
        merged = [_join(a[i], b[k - 1 - i], after) for i in range(k)]
        merged.sort(key=lambda subset: -subset[0])
        heapq.heappush(heap, (-(merged[0][0] - merged[-1][0]), part_id, merged))
        part_id += 1
    for rank, (_, at, _) in enumerate(pop()):
        while at >= 0:
            rank_of[at] = rank
            at = after[at]
    return rank_of


def _join(x: list, y: list, after: list[int]) -> list:
    if x[1] < 0:
        return [x[0] + y[0], y[1], y[2]]
    if y[1] < 0:
        return [x[0] + y[0], x[1], x[2]]
    after[x[2]] = y[1]
    return [x[0] + y[0], x[1], y[2]]


def _fill_all(ranks: list[list[int]], lens: list[int], max_tokens: int, m: int) -> list[list[list[int]]] | None:
    """Every rank's sequences, longest first, into the least-filled of m micro-batches; None if one does not fit."""
    packed = []
    for items in ranks:
        bins: list[list[int]] = [[] for _ in range(m)]
        least = [(0, j) for j in range(m)]
        for item in items:
            load, j = least[0]
            if load + lens[item] > max_tokens:
                return None
            bins[j].append(item)
            heapq.heapreplace(least, (load + lens[item], j))
        packed.append(bins)
    return packed
