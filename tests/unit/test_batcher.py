"""Continuous batching and the prefix cache of the embedded engine: same tokens and log-probs as a row run alone.

Run: python -m pytest tests/unit/test_batcher.py -q
"""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from erl_mega.rollout.engine import GenerationRequest, SamplingParams
from erl_mega.rollout.local import LocalEngine
from erl_mega.rollout.prefix_cache import PrefixCache

VOCAB, PAD = 300, 0
GREEDY = SamplingParams(max_new_tokens=6, temperature=0.0)
SAMPLED = SamplingParams(max_new_tokens=6, temperature=0.9, top_p=0.9)


@pytest.fixture(scope="module")
def model() -> Qwen2ForCausalLM:
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         initializer_range=0.2, tie_word_embeddings=True)
    return Qwen2ForCausalLM(config).eval()


def _prompts(n: int, seed: int = 0) -> list[tuple[int, ...]]:
    g = torch.Generator().manual_seed(seed)
    return [tuple(torch.randint(1, VOCAB, (int(4 + 3 * (i % 4)),), generator=g).tolist()) for i in range(n)]


def _assert_same(outs, refs) -> None:
    for out, ref in zip(outs, refs, strict=True):
        assert out.token_ids == ref.token_ids and out.finish_reason == ref.finish_reason
        torch.testing.assert_close(torch.tensor(out.logprobs), torch.tensor(ref.logprobs), atol=1e-5, rtol=0)


def _alone(model, requests):
    """Each request on its own, no cache: the reference every batching must reproduce."""
    engine = LocalEngine(copy.deepcopy(model), PAD, max_batch_size=1, prefix_cache_bytes=0)
    return [engine.generate([r])[0] for r in requests]


def test_request_joining_mid_decode_matches_running_alone(model):
    engine = LocalEngine(copy.deepcopy(model), PAD, prefix_cache_bytes=0)
    first = [GenerationRequest(p, SamplingParams(max_new_tokens=2 + 4 * i, temperature=0.0), seed=i)
             for i, p in enumerate(_prompts(3))]
    late = [GenerationRequest(p, SAMPLED, seed=10 + i) for i, p in enumerate(_prompts(2, seed=1))]
    batch, outs = engine.open_batch(), {}
    batch.admit([(i, r, engine.draws(r)) for i, r in enumerate(first)])
    for _ in range(2):
        outs.update((d.key, d.completion) for d in batch.step())
    assert 0 in outs and len(batch) == 2  # the 2-token request left as soon as it finished
    batch.admit([(3 + i, r, engine.draws(r)) for i, r in enumerate(late)])
    assert len(batch) == 4  # joined the running decode
    while len(batch):
        outs.update((d.key, d.completion) for d in batch.step())
    _assert_same([outs[k] for k in range(5)], _alone(model, first + late))


def test_continuous_generate_matches_alone_beyond_max_batch(model):
    requests = [GenerationRequest(p, GREEDY if i % 2 else SAMPLED, seed=i) for i, p in enumerate(_prompts(7))]
    engine = LocalEngine(copy.deepcopy(model), PAD, max_batch_size=3)
    _assert_same(engine.generate(requests), _alone(model, requests))


def _turns(engine: LocalEngine, prompts, turns: int = 3):
    """A multi-turn rollout: each turn's prompt is the last prompt + its completion + a 3-token observation."""
    outs, history = [], list(prompts)
    for turn in range(turns):
        requests = [GenerationRequest(h, SAMPLED if i % 2 else GREEDY, seed=100 * turn + i) for i, h in enumerate(history)]
        completions = engine.generate(requests)
        outs.extend(completions)
        history = [h + c.token_ids + (7 + turn, 8, 9) for h, c in zip(history, completions)]
    return outs


def test_prefix_cache_skips_earlier_turns_and_changes_nothing(model):
    prompts = _prompts(4)
    cached = LocalEngine(copy.deepcopy(model), PAD)
    _assert_same(_turns(cached, prompts), _turns(LocalEngine(copy.deepcopy(model), PAD, prefix_cache_bytes=0), prompts))
    stats = cached.prefix_cache.stats
    assert stats["hits"] == 2 * len(prompts)  # turns 2 and 3 of every episode
    assert stats["cached_tokens"] > sum(map(len, prompts))  # at least turn 1's prompts were not prefilled again


def test_shared_prefix_is_reused_across_episodes(model):
    system = _prompts(1, seed=5)[0] * 3
    requests = [GenerationRequest(system + p, GREEDY, seed=i) for i, p in enumerate(_prompts(3, seed=6))]
    engine = LocalEngine(copy.deepcopy(model), PAD)
    engine.generate(requests[:1])
    batch = engine.open_batch()
    batch.admit([(i, r, engine.draws(r)) for i, r in enumerate(requests[1:])])
    assert [r.cached_tokens for r in batch.rows] == [len(system)] * 2
    outs = []
    while len(batch):
        outs.extend(sorted(batch.step(), key=lambda d: d.key))
    _assert_same([d.completion for d in outs], _alone(model, requests[1:]))


def test_weight_update_flush_and_release_invalidate(model):
    engine = LocalEngine(copy.deepcopy(model), PAD)
    requests = [GenerationRequest(p, GREEDY) for p in _prompts(2)]
    for invalidate in (engine.flush_cache, engine.release_memory,
                       lambda: engine.update_weights([list(engine.model.named_parameters())[:1]], 1)):
        engine.resume_memory()
        engine.generate(requests)
        assert len(engine.prefix_cache) == 2
        invalidate()
        assert len(engine.prefix_cache) == 0


def test_lru_eviction_keeps_within_bytes():
    kv = lambda n: [(torch.zeros(2, n, 4), torch.zeros(2, n, 4))]  # 64 bytes per token
    cache = PrefixCache(max_bytes=64 * 10)
    cache.insert((1, 2, 3, 4), kv(4))
    cache.insert((5, 6, 7), kv(3))
    assert cache.match((1, 2, 3, 9))[0] == 3  # touches (1, 2, 3, 4): (5, 6, 7) is now the oldest
    cache.insert((8, 9, 10, 11), kv(4))
    assert cache.nbytes <= cache.max_bytes and cache.stats["evictions"] == 1
    assert cache.match((5, 6, 7, 1))[0] == 0 and cache.match((1, 2, 3, 4, 5))[0] == 4
    cache.insert((1, 2, 3, 4, 5, 6), kv(6))  # subsumes (1, 2, 3, 4)
    assert cache.match((1, 2, 3, 4, 5, 6, 7))[0] == 6 and cache.nbytes <= cache.max_bytes
    cache.insert(tuple(range(20)), kv(20))  # larger than the whole budget: not kept
    assert cache.match(tuple(range(21)))[0] == 0
