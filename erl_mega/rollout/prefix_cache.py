"""Token-prefix KV reuse for the embedded engine, so turn k+1 of an episode does not re-prefill turns 1..k.

Entries are finished sequences' keys and values, keyed by their token ids. A prompt reuses its longest
common prefix with any entry: the KV of token i depends only on tokens 0..i, so any shared prefix is
exact. Memory is bounded in bytes, least recently used first out; the owner clears it whenever the
weights change (update, flush, release), since cached KV is a function of the weights.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch

KV = list[tuple[torch.Tensor, torch.Tensor]]  # per layer (keys, values), each [kv_heads, tokens, head_dim]


@dataclass(frozen=True)
class _Entry:
    tokens: torch.Tensor  # [n] int64 on CPU, for the vectorised common-prefix search
    kv: KV
    nbytes: int


class PrefixCache:
    """An LRU of (token ids -> per-layer KV) bounded by `max_bytes`; `stats` counts lookups, hits and tokens saved."""

    def __init__(self, max_bytes: int) -> None:
        if max_bytes < 0:
            raise ValueError(f"prefix cache max_bytes={max_bytes}; must be >= 0 (0 disables it)")
        self.max_bytes = max_bytes
        self.nbytes = 0
        self._entries: OrderedDict[tuple[int, ...], _Entry] = OrderedDict()
        self.stats = {"lookups": 0, "hits": 0, "cached_tokens": 0, "evictions": 0}

    def __len__(self) -> int:
        return len(self._entries)

    def match(self, prompt: tuple[int, ...]) -> tuple[int, KV | None]:
        """(n, KV of the prompt's first n tokens) for the longest cached prefix; n < len(prompt) always.

        The last prompt token is never served from the cache: its forward pass gives the first logits.
        """
        self.stats["lookups"] += 1
        limit = len(prompt) - 1
        best, best_key = 0, None
        query = None
        for key, entry in self._entries.items():
            n = min(limit, len(key))
            if n <= best or key[0] != prompt[0]:
                continue
            if key[:n] == prompt[:n]:
                common = n
            else:
                query = torch.tensor(prompt[:limit]) if query is None else query
                common = int((entry.tokens[:n] != query[:n]).int().argmax())  # first mismatch
            if common > best:
                best, best_key = common, key
        if best_key is None:
            return 0, None
        self._entries.move_to_end(best_key)
        self.stats["hits"] += 1
        self.stats["cached_tokens"] += best
        return best, [(k[:, :best], v[:, :best]) for k, v in self._entries[best_key].kv]

    def insert(self, tokens: tuple[int, ...], kv: KV) -> None:
        """Remember a sequence's KV (one slot per token); entries it extends are dropped as subsumed."""
        nbytes = sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in kv)
        if not tokens or nbytes > self.max_bytes:
            return
        for key in list(self._entries):
            if len(key) >= len(tokens) and key[: len(tokens)] == tokens:
                self._entries.move_to_end(key)  # already covered by a longer entry
                return
            if key == tokens[: len(key)]:
                self._drop(key)
        self._entries[tokens] = _Entry(torch.tensor(tokens), kv, nbytes)
        self.nbytes += nbytes
        while self.nbytes > self.max_bytes:
            self._drop(next(iter(self._entries)))
            self.stats["evictions"] += 1

    def clear(self) -> None:
        """Forget every entry (the weights changed, or memory is being released)."""
        self._entries.clear()
        self.nbytes = 0

    def _drop(self, key: tuple[int, ...]) -> None:
        self.nbytes -= self._entries.pop(key).nbytes
