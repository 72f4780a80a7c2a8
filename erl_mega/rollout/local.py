"""The embedded rollout backend: batched KV-cache sampling with an in-process HF model (CPU or CUDA)."""

from __future__ import annotations

from typing import Iterable

import torch
import transformers
from transformers import DynamicCache

from erl_mega.rollout.engine import Completion, GenerationRequest
from erl_mega.weights.buckets import NamedTensors

# Requests without a seed draw from a counter that starts here, so they never replay a caller's small seed.
_UNSEEDED_BASE = 1 << 63
# Top-p looks for the nucleus among this many most likely tokens first (widened x8 until it fits): at a
# 152k vocab on 2 CPU cores topk(256) took ~15 ms against ~600 ms for a full sort.
_NUCLEUS_CANDIDATES = 256


class LocalEngine:
    """A `RolloutEngine` that samples from an HF causal LM held in this process; the quick-start backend."""

    def __init__(self, model: transformers.PreTrainedModel, pad_token_id: int, max_batch_size: int = 64) -> None:
        vocab_size = model.get_input_embeddings().num_embeddings
        if not 0 <= pad_token_id < vocab_size:
            raise ValueError(f"pad_token_id={pad_token_id}; must be in [0, {vocab_size})")
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size={max_batch_size}; must be >= 1")
        self.model = model.eval()
        self.pad_token_id = pad_token_id
        self.max_batch_size = max_batch_size
        self.weight_version = 0
        self._vocab_size = vocab_size
        self._device = next(model.parameters()).device  # where weights live while resident
        self._params = dict(model.named_parameters(remove_duplicate=False))  # tied names map to one Parameter
        self._released = False
        self._unseeded_count = 0

    def generate(self, requests: list[GenerationRequest]) -> list[Completion]:
        """Sample one completion per request, in order, `max_batch_size` requests per forward batch."""
        if self._released:
            raise RuntimeError("LocalEngine.generate called while memory is released; call resume_memory() first")
        for i, request in enumerate(requests):
            if not request.prompt_ids:
                raise ValueError(f"requests[{i}].prompt_ids is empty")
            if min(request.prompt_ids) < 0 or max(request.prompt_ids) >= self._vocab_size:
                raise ValueError(f"requests[{i}].prompt_ids has a token outside [0, {self._vocab_size})")
        uniforms = [self._uniforms(request) for request in requests]
        completions: list[Completion] = []
        for start in range(0, len(requests), self.max_batch_size):
            chunk = slice(start, start + self.max_batch_size)
            completions.extend(self._generate_batch(requests[chunk], uniforms[chunk]))
        return completions

    def update_weights(self, buckets: Iterable[NamedTensors], version: int) -> None:
        """Copy HF-named full tensors into the model in place (tied weights stay tied), then set `weight_version`."""
        with torch.no_grad():
            for bucket in buckets:
                targets = [self._target(name, tensor) for name, tensor in bucket]  # check a bucket before writing it
                for target, (_, tensor) in zip(targets, bucket):
                    target.copy_(tensor)
        self.weight_version = version

    def release_memory(self) -> None:
        """Free accelerator memory for the trainer: weights go to host memory (a no-op on CPU but for the flag).

        The KV cache lives only inside `generate`, so nothing else is held between calls.
        """
        if self._device.type == "cuda":
            self.model.to("cpu")
            torch.cuda.empty_cache()
        self._released = True

    def resume_memory(self) -> None:
        """Bring the weights back to their device so `generate` works again."""
        self.model.to(self._device)
        self._released = False

    def health(self) -> bool:
        """True when the weights are resident and `generate` can run."""
        return not self._released

    def _target(self, name: str, tensor: torch.Tensor) -> torch.nn.Parameter:
        """The parameter an HF-named tensor overwrites, or a ValueError naming what does not fit."""
        if name not in self._params:
            raise ValueError(f"update_weights: unknown parameter {name!r}")
        param = self._params[name]
        if tensor.shape != param.shape:
            raise ValueError(
                f"update_weights: {name!r} has shape {tuple(tensor.shape)}; the model's is {tuple(param.shape)}"
            )
        return param

    def _uniforms(self, request: GenerationRequest) -> torch.Tensor:
        """One uniform per sampling step from the request's own generator, so draws ignore batch composition."""
        if request.seed is None:
            seed = _UNSEEDED_BASE + self._unseeded_count
            self._unseeded_count += 1
        else:
            seed = request.seed
        generator = torch.Generator().manual_seed(seed)
        return torch.rand(request.params.max_new_tokens, generator=generator, dtype=torch.float64)

    @torch.inference_mode()
    def _generate_batch(self, requests: list[GenerationRequest], uniforms: list[torch.Tensor]) -> list[Completion]:
        """Prefill left-padded prompts, then decode one token per step, dropping rows as they finish."""
        device, size = self._device, len(requests)
        params = [request.params for request in requests]
        ids, mask = self._left_pad([request.prompt_ids for request in requests])
        positions = (mask.cumsum(-1) - 1).clamp_(min=0)
        temperature = torch.tensor([p.temperature for p in params], device=device)
        top_p = torch.tensor([p.top_p for p in params], device=device)
        max_new = torch.tensor([p.max_new_tokens for p in params], device=device)
        stop_ids = _stop_table([p.stop_token_ids for p in params], device)
        draws = torch.nn.utils.rnn.pad_sequence(uniforms, batch_first=True).to(device)  # [batch, max_new]

        cache = DynamicCache(config=self.model.config)
        logits = self.model(
            input_ids=ids, attention_mask=mask, position_ids=positions, cache=cache, use_cache=True, logits_to_keep=1
        ).logits[:, -1]
        next_position = positions[:, -1]
        rows = torch.arange(size, device=device)  # request index of each live batch row
        tokens: list[list[int]] = [[] for _ in range(size)]
        logprobs: list[list[float]] = [[] for _ in range(size)]
        finish = ["length"] * size
        for step in range(int(max_new.max())):
            token, logprob = _sample_tokens(logits, temperature[rows], top_p[rows], draws[rows, step])
            stopped = (token[:, None] == stop_ids[rows]).any(-1)
            done = stopped | (max_new[rows] <= step + 1)
            for row, t, lp, s in zip(rows.tolist(), token.tolist(), logprob.tolist(), stopped.tolist()):
                tokens[row].append(t)
                logprobs[row].append(lp)
                if s:
                    finish[row] = "stop"
            if bool(done.all()):
                break
            if bool(done.any()):
                live = (~done).nonzero().squeeze(1)
                cache.batch_select_indices(live)
                rows, token, mask, next_position = rows[live], token[live], mask[live], next_position[live]
            mask = torch.cat([mask, mask.new_ones(len(rows), 1)], dim=1)
            next_position = next_position + 1
            logits = self.model(
                input_ids=token[:, None],
                attention_mask=mask,
                position_ids=next_position[:, None],
                cache=cache,
                use_cache=True,
            ).logits[:, -1]
        return [
            Completion(tuple(t), tuple(lp), reason, self.weight_version)
            for t, lp, reason in zip(tokens, logprobs, finish)
        ]

    def _left_pad(self, prompts: list[tuple[int, ...]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompts right-aligned into `[batch, longest]` ids and a 1/0 attention mask."""
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, prompt in enumerate(prompts):
            ids[row, width - len(prompt) :] = torch.tensor(prompt, dtype=torch.long)
            mask[row, width - len(prompt) :] = 1
        return ids.to(self._device), mask.to(self._device)


def _stop_table(stop_token_ids: list[tuple[int, ...]], device: torch.device) -> torch.Tensor:
    """Per-row stop ids padded with -1 (never a token) into `[batch, max(1, most stops)]`."""
    table = torch.full((len(stop_token_ids), max(1, *map(len, stop_token_ids))), -1, dtype=torch.long)
    for row, stops in enumerate(stop_token_ids):
        table[row, : len(stops)] = torch.tensor(stops, dtype=torch.long)
    return table.to(device)


def _sample_tokens(
    logits: torch.Tensor, temperature: torch.Tensor, top_p: torch.Tensor, uniform: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Next token per row (argmax where temperature is 0, else nucleus sampling) and its untruncated log-prob.

    Shapes: logits `[batch, vocab]`, temperature / top_p / uniform `[batch]`. The log-prob is
    log_softmax(logits / T) in fp32 with T = 1 for greedy rows, taken before top-p truncation: the
    policy's own log-prob, which is what the trainer recomputes.
    """
    greedy = temperature == 0
    scale = torch.where(greedy, torch.ones_like(temperature), temperature)
    logits = logits.float()
    logp = torch.log_softmax(logits / scale[:, None], dim=-1)
    token = logits.argmax(-1)  # on raw logits, as HF greedy does: log_softmax can round near-ties together
    full = ~greedy & (top_p >= 1)
    if bool(full.any()):
        token[full] = _inverse_cdf(logp[full].exp(), uniform[full])
    nucleus = ~greedy & (top_p < 1)
    if bool(nucleus.any()):
        probs, ids = _nucleus(logp[nucleus].exp(), top_p[nucleus])
        token[nucleus] = ids.gather(-1, _inverse_cdf(probs, uniform[nucleus])[:, None]).squeeze(1)
    return token, logp.gather(-1, token[:, None]).squeeze(1)


def _inverse_cdf(weights: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
    """Column index per row drawn in proportion to `weights` `[rows, n]` (unnormalised, >= 0) by its uniform."""
    cdf = weights.cumsum(-1)
    total = cdf[:, -1:]
    # u * total can round up to total; keep it strictly below so a zero-weight tail is never picked
    target = torch.minimum(uniform[:, None].to(cdf.dtype) * total, torch.nextafter(total, torch.zeros_like(total)))
    return torch.searchsorted(cdf, target, right=True).squeeze(1)


def _nucleus(probs: torch.Tensor, top_p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's smallest most-likely token set with mass >= top_p: `[rows, k]` probs (0 outside) and token ids."""
    k = min(_NUCLEUS_CANDIDATES, probs.shape[-1])
    while True:
        top, ids = probs.topk(k, dim=-1)  # most likely first
        if k == probs.shape[-1] or bool((top.sum(-1) >= top_p).all()):
            break
        k = min(8 * k, probs.shape[-1])
    keep = top.cumsum(-1) - top < top_p[:, None]
    return top * keep, ids
