"""Continuous batching for the embedded engine: requests join a running decode at any step, and leave when done.

One KV cache holds every live row, `[rows, kv_heads, width, head_dim]` per layer, with a 1/0 attention
mask `[rows, width]` saying which slots are a row's tokens. A row's slots need not be contiguous: a
newcomer's KV is left-padded to the batch's width when it joins, a reused prefix sits before a gap, and
explicit position ids keep RoPE exact. Masked slots weigh exactly zero in attention, so each row's
tokens and log-probs are those it would get alone (to float rounding).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Hashable

import torch
import torch.nn.functional as F
import transformers
from transformers import DynamicCache

from erl_mega.rollout.engine import Completion, GenerationRequest
from erl_mega.rollout.prefix_cache import KV, PrefixCache
from erl_mega.rollout.sampling import sample_tokens


@dataclass
class _Row:
    key: Hashable  # the caller's handle for this request
    request: GenerationRequest
    draws: torch.Tensor  # [max_new_tokens] float64 uniforms, one per sampling step
    length: int  # tokens whose KV is in the cache (= the next token's position)
    cached_tokens: int  # prompt tokens served from the prefix cache
    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)


@dataclass(frozen=True)
class Finished:
    """A request that left the batch: its completion and how many prompt tokens came from the prefix cache."""

    key: Hashable
    completion: Completion
    cached_tokens: int


class RunningBatch:
    """The live rows of one model's decode; `admit` prefills newcomers, `step` samples one token for every row."""

    def __init__(self, model: transformers.PreTrainedModel, pad_token_id: int, prefix_cache: PrefixCache | None,
                 weight_version: int) -> None:
        self.model, self.pad_token_id, self.prefix_cache = model, pad_token_id, prefix_cache
        self.weight_version = weight_version
        self.device = next(model.parameters()).device
        self.rows: list[_Row] = []
        self._cache: DynamicCache | None = None
        self._mask: torch.Tensor | None = None  # [rows, width] long
        self._logits: torch.Tensor | None = None  # [rows, vocab]: each row's next-token logits

    def __len__(self) -> int:
        return len(self.rows)

    @torch.inference_mode()
    def admit(self, items: list[tuple[Hashable, GenerationRequest, torch.Tensor]]) -> None:
        """Prefill (key, request, draws) newcomers, each from its longest cached prefix, and merge them in."""
        if not items:
            return
        hits = [self.prefix_cache.match(r.prompt_ids) if self.prefix_cache else (0, None) for _, r, _ in items]
        past = max(n for n, _ in hits)
        suffix = max(len(r.prompt_ids) - n for (_, r, _), (n, _) in zip(items, hits))
        ids = torch.full((len(items), suffix), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(items), past + suffix), dtype=torch.long)
        for row, ((_, request, _), (n, _)) in enumerate(zip(items, hits)):
            rest = request.prompt_ids[n:]
            ids[row, suffix - len(rest):] = torch.tensor(rest, dtype=torch.long)
            mask[row, past - n: past] = 1
            mask[row, past + suffix - len(rest):] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        positions = (mask.cumsum(-1) - 1).clamp_(min=0)[:, past:]
        cache = DynamicCache(config=self.model.config)
        if past:
            for layer, kv in enumerate(_right_aligned(hits, past)):
                cache.update(*kv, layer)
        logits = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, cache=cache, use_cache=True,
                            logits_to_keep=1).logits[:, -1]
        rows = [_Row(key, request, draws, len(request.prompt_ids), n) for (key, request, draws), (n, _) in zip(items, hits)]
        self._merge(cache, mask, logits, rows)

    @torch.inference_mode()
    def step(self) -> list[Finished]:
        """Sample each row's next token; finished rows leave (their KV goes to the prefix cache), the rest decode."""
        if not self.rows:
            return []
        rows = self.rows
        temperature = torch.tensor([r.request.params.temperature for r in rows], device=self.device)
        top_p = torch.tensor([r.request.params.top_p for r in rows], device=self.device)
        uniform = torch.stack([r.draws[len(r.tokens)] for r in rows]).to(self.device)
        token, logprob = sample_tokens(self._logits, temperature, top_p, uniform)
        finished, keep = [], []
        for i, (row, t, lp) in enumerate(zip(rows, token.tolist(), logprob.tolist())):
            row.tokens.append(t)
            row.logprobs.append(lp)
            stopped = t in row.request.params.stop_token_ids
            if stopped or len(row.tokens) >= row.request.params.max_new_tokens:
                finished.append(self._finish(i, row, "stop" if stopped else "length"))
            else:
                keep.append(i)
        if len(keep) < len(rows):
            self._select(keep)
            token = token[keep]
        if self.rows:
            self._decode(token)
        return finished

    def drop(self, keys: set[Any]) -> list[_Row]:
        """Remove the rows with these keys (aborted requests) without finishing them; returns the removed rows."""
        gone = [r for r in self.rows if r.key in keys]
        if gone:
            self._select([i for i, r in enumerate(self.rows) if r.key not in keys])
        return gone

    def _decode(self, token: torch.Tensor) -> None:
        self._mask = torch.cat([self._mask, self._mask.new_ones(len(self.rows), 1)], dim=1)
        positions = torch.tensor([[r.length] for r in self.rows], device=self.device)
        self._logits = self.model(input_ids=token[:, None], attention_mask=self._mask, position_ids=positions,
                                  cache=self._cache, use_cache=True).logits[:, -1]
        for r in self.rows:
            r.length += 1

    def _finish(self, index: int, row: _Row, reason: str) -> Finished:
        if self.prefix_cache is not None and self.prefix_cache.max_bytes:
            slots = self._mask[index].nonzero().squeeze(1)  # the row's tokens: prompt + all but the last sampled
            kv = [(layer.keys[index][:, slots], layer.values[index][:, slots]) for layer in self._cache.layers]
            self.prefix_cache.insert(row.request.prompt_ids + tuple(row.tokens[:-1]), kv)
        completion = Completion(tuple(row.tokens), tuple(row.logprobs), reason, self.weight_version)
        return Finished(row.key, completion, row.cached_tokens)

    def _select(self, keep: list[int]) -> None:
        """Keep these rows, then cut leading slots no remaining row uses."""
        self.rows = [self.rows[i] for i in keep]
        if not keep:
            self._cache = self._mask = self._logits = None
            return
        index = torch.tensor(keep, device=self.device)
        self._cache.batch_select_indices(index)
        self._mask, self._logits = self._mask[index], self._logits[index]
        first = int(self._mask.any(0).int().argmax())
        if first:
            self._mask = self._mask[:, first:]
            for layer in self._cache.layers:
                layer.keys, layer.values = layer.keys[:, :, first:], layer.values[:, :, first:]

    def _merge(self, cache: DynamicCache, mask: torch.Tensor, logits: torch.Tensor, rows: list[_Row]) -> None:
        """Append prefilled rows; the narrower of the two caches is left-padded with masked slots."""
        if not self.rows:
            self._cache, self._mask, self._logits, self.rows = cache, mask, logits, rows
            return
        width = max(self._mask.shape[1], mask.shape[1])
        self._mask = torch.cat([_left_pad(self._mask, width, 0), _left_pad(mask, width, 0)])
        for ours, theirs in zip(self._cache.layers, cache.layers):
            ours.keys = torch.cat([_left_pad(ours.keys, width, 1), _left_pad(theirs.keys, width, 1)])
            ours.values = torch.cat([_left_pad(ours.values, width, 1), _left_pad(theirs.values, width, 1)])
        self._logits = torch.cat([self._logits, logits])
        self.rows = self.rows + rows


def _left_pad(t: torch.Tensor, width: int, dims_after: int) -> torch.Tensor:
    """Zero-pad the slot dimension (the one with `dims_after` dimensions after it) on the left up to `width`."""
    return F.pad(t, (0, 0) * dims_after + (width - t.shape[-1 - dims_after], 0))


def _right_aligned(hits: list[tuple[int, KV | None]], width: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per layer, the reused prefixes stacked into `[rows, kv_heads, width, head_dim]`, each ending at `width`."""
    sample = next(kv for n, kv in hits if n)
    layers = []
    for layer, (k0, v0) in enumerate(sample):
        keys = k0.new_zeros((len(hits), k0.shape[0], width, k0.shape[2]))
        values = v0.new_zeros((len(hits), v0.shape[0], width, v0.shape[2]))
        for row, (n, kv) in enumerate(hits):
            if n:
                keys[row, :, width - n:] = kv[layer][0]
                values[row, :, width - n:] = kv[layer][1]
        layers.append((keys, values))
    return layers
