"""The embedded rollout backend: continuously batched KV-cache sampling with an in-process HF model (CPU or CUDA)."""

from __future__ import annotations

from collections import deque
from typing import Iterable

import torch
import transformers

from erl_mega.rollout.batcher import RunningBatch
from erl_mega.rollout.engine import Completion, GenerationRequest
from erl_mega.rollout.prefix_cache import PrefixCache
from erl_mega.weights.buckets import NamedTensors

# Requests without a seed draw from a counter that starts here, so they never replay a caller's small seed.
_UNSEEDED_BASE = 1 << 63
DEFAULT_PREFIX_CACHE_BYTES = 1 << 30


class LocalEngine:
    """A `RolloutEngine` that samples from an HF causal LM held in this process; the quick-start backend."""

    def __init__(self, model: transformers.PreTrainedModel, pad_token_id: int, max_batch_size: int = 64,
                 prefix_cache_bytes: int = DEFAULT_PREFIX_CACHE_BYTES) -> None:
        layer_types = getattr(model.config.get_text_config(decoder=True), "layer_types", None) or ()
        if any(t != "full_attention" for t in layer_types):
            raise ValueError(f"model layer_types={sorted(set(layer_types))}; the embedded engine serves full attention only")
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
        # turn k+1 of an episode reuses turn k's KV; None when disabled (prefix_cache_bytes=0)
        self.prefix_cache = PrefixCache(prefix_cache_bytes) if prefix_cache_bytes else None

    def generate(self, requests: list[GenerationRequest]) -> list[Completion]:
        """Sample one completion per request, in order; up to `max_batch_size` decode together, and a finished
        row's place goes to the next waiting request at once (continuous batching)."""
        for i, request in enumerate(requests):
            self.check(request, f"requests[{i}]")
        waiting = deque((i, request, self.draws(request)) for i, request in enumerate(requests))
        batch = self.open_batch()
        completions: list[Completion | None] = [None] * len(requests)
        while waiting or batch.rows:
            batch.admit([waiting.popleft() for _ in range(min(len(waiting), self.max_batch_size - len(batch)))])
            for done in batch.step():
                completions[done.key] = done.completion
        return completions

    def check(self, request: GenerationRequest, field: str) -> None:
        """ValueError naming `field` if the request cannot run; RuntimeError while memory is released."""
        if self._released:
            raise RuntimeError("LocalEngine.generate called while memory is released; call resume_memory() first")
        if not request.prompt_ids:
            raise ValueError(f"{field}.prompt_ids is empty")
        if min(request.prompt_ids) < 0 or max(request.prompt_ids) >= self._vocab_size:
            raise ValueError(f"{field}.prompt_ids has a token outside [0, {self._vocab_size})")

    def open_batch(self) -> RunningBatch:
        """An empty continuous batch over this engine's model and prefix cache, at the current weight version."""
        return RunningBatch(self.model, self.pad_token_id, self.prefix_cache, self.weight_version)

    def flush_cache(self) -> None:
        """Drop every cached prefix (SGLang's /flush_cache); weight updates and memory release do it too."""
        if self.prefix_cache is not None:
            self.prefix_cache.clear()

    def update_weights(self, buckets: Iterable[NamedTensors], version: int) -> None:
        """Copy HF-named full tensors into the model in place (tied weights stay tied), then set `weight_version`."""
        with torch.no_grad():
            for bucket in buckets:
                targets = [self._target(name, tensor) for name, tensor in bucket]  # check a bucket before writing it
                for target, (_, tensor) in zip(targets, bucket):
                    target.copy_(tensor)
        self.flush_cache()
        self.weight_version = version

    def release_memory(self) -> None:
        """Free accelerator memory for the trainer: weights go to host memory (a no-op on CPU but for the flag).

        The prefix cache is dropped; the decode KV cache lives only while requests run.
        """
        self.flush_cache()
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

    def draws(self, request: GenerationRequest) -> torch.Tensor:
        """One uniform per sampling step from the request's own generator, so draws ignore batch composition."""
        if request.seed is None:
            seed = _UNSEEDED_BASE + self._unseeded_count
            self._unseeded_count += 1
        else:
            seed = request.seed
        generator = torch.Generator().manual_seed(seed)
        return torch.rand(request.params.max_new_tokens, generator=generator, dtype=torch.float64)
