"""The `RolloutEngine` contract: every backend must pass this suite on the same tiny random HF models.

Run: python -m pytest tests/contracts/test_rollout_engine.py -q
A new backend joins by appending a factory (model -> engine serving that model) to `BACKENDS`.
"""

from __future__ import annotations

import copy
from typing import Callable

import pytest
import torch
import transformers
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from erl_mega.rollout.engine import Completion, GenerationRequest, RolloutEngine, SamplingParams
from erl_mega.rollout.local import LocalEngine

PAD = 0
VOCAB = 300
GREEDY = SamplingParams(max_new_tokens=10, temperature=0.0)

EngineFactory = Callable[[transformers.PreTrainedModel], RolloutEngine]  # wraps (a copy of) the given model


def _local_engine(model: transformers.PreTrainedModel) -> RolloutEngine:
    return LocalEngine(model, pad_token_id=PAD, max_batch_size=8)  # small batches so chunking is exercised


def _local_cuda_engine(model: transformers.PreTrainedModel) -> RolloutEngine:
    return LocalEngine(model.to("cuda"), pad_token_id=PAD, max_batch_size=8)


_NEEDS_CUDA = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]
BACKENDS = [
    pytest.param(_local_engine, id="local"),
    pytest.param(_local_cuda_engine, id="local-cuda", marks=_NEEDS_CUDA),
]


def _tiny_model(family: str, vocab_size: int, seed: int) -> transformers.PreTrainedModel:
    """A random fp32 causal LM; initializer_range 0.2 gives logits peaked enough that argmax has no near-ties."""
    torch.manual_seed(seed)
    shape = dict(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        initializer_range=0.2,
    )
    if family == "qwen2":  # tied embeddings, as Qwen2.5's small models
        model = Qwen2ForCausalLM(Qwen2Config(tie_word_embeddings=True, **shape))
    else:
        model = LlamaForCausalLM(LlamaConfig(tie_word_embeddings=False, **shape))
    model.generation_config.eos_token_id = None  # HF generate runs to max_new_tokens, like our stop-free requests
    return model.eval()


@pytest.fixture(scope="module", params=["qwen2", "llama"])
def model(request: pytest.FixtureRequest) -> transformers.PreTrainedModel:
    return _tiny_model(request.param, VOCAB, seed=0)


@pytest.fixture(params=BACKENDS)
def make_engine(request: pytest.FixtureRequest) -> EngineFactory:
    return lambda model: request.param(copy.deepcopy(model))


def _prompts(lengths: tuple[int, ...], seed: int = 1) -> list[tuple[int, ...]]:
    generator = torch.Generator().manual_seed(seed)
    return [tuple(torch.randint(1, VOCAB, (n,), generator=generator).tolist()) for n in lengths]


def _hf_greedy(model: transformers.PreTrainedModel, prompts: list[tuple[int, ...]], new: int) -> list[list[int]]:
    """Reference: transformers' own greedy generate over the left-padded batch."""
    width = max(map(len, prompts))
    ids = torch.tensor([[PAD] * (width - len(p)) + list(p) for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    with torch.no_grad():
        out = model.generate(ids, attention_mask=mask, max_new_tokens=new, do_sample=False, pad_token_id=PAD)
    return out[:, width:].tolist()


def _full_forward_logprobs(
    model: transformers.PreTrainedModel, prompt: tuple[int, ...], completion: Completion, temperature: float
) -> torch.Tensor:
    """log_softmax(logits / T) of each completion token from one unpadded forward over prompt + completion."""
    ids = torch.tensor([list(prompt) + list(completion.token_ids)])
    with torch.no_grad():
        logits = model(ids).logits[0, len(prompt) - 1 : -1].float()
    logp = torch.log_softmax(logits / (temperature or 1.0), dim=-1)
    return logp.gather(-1, torch.tensor(completion.token_ids)[:, None]).squeeze(1)


def test_greedy_matches_hf_generate(make_engine: EngineFactory, model: transformers.PreTrainedModel) -> None:
    prompts = _prompts((3, 17, 1, 9, 25))
    out = make_engine(model).generate([GenerationRequest(p, GREEDY) for p in prompts])
    assert [list(c.token_ids) for c in out] == _hf_greedy(model, prompts, GREEDY.max_new_tokens)
    assert all(c.finish_reason == "length" and c.weight_version == 0 for c in out)


def test_logprobs_match_full_forward(make_engine: EngineFactory, model: transformers.PreTrainedModel) -> None:
    prompts = _prompts((4, 12, 20, 7))
    temperatures = (0.0, 0.8, 1.0, 0.0)
    requests = [
        GenerationRequest(p, SamplingParams(max_new_tokens=8, temperature=t), seed=i)
        for i, (p, t) in enumerate(zip(prompts, temperatures))
    ]
    out = make_engine(model).generate(requests)
    for prompt, t, completion in zip(prompts, temperatures, out):
        assert len(completion.logprobs) == len(completion.token_ids) == 8
        expected = _full_forward_logprobs(model, prompt, completion, t)
        torch.testing.assert_close(torch.tensor(completion.logprobs), expected, atol=2e-5, rtol=0)


def test_same_seed_same_tokens_regardless_of_batch(
    make_engine: EngineFactory, model: transformers.PreTrainedModel
) -> None:
    params = SamplingParams(max_new_tokens=8, temperature=1.0, top_p=0.9)
    prompts = _prompts((5, 13, 2))
    targets = [GenerationRequest(p, params, seed=100 + i) for i, p in enumerate(prompts)]
    fillers = [GenerationRequest(p, params, seed=7) for p in _prompts((30, 1, 9, 22, 4, 11, 6, 3, 15), seed=2)]
    engine = make_engine(model)

    together = engine.generate(targets)
    shuffled = engine.generate(fillers[:4] + [targets[2]] + fillers[4:] + [targets[0], targets[1]])
    alone = [engine.generate([r])[0] for r in targets]
    reordered = [shuffled[-2], shuffled[-1], shuffled[4]]
    for a, b, c in zip(together, reordered, alone):
        assert a.token_ids == b.token_ids == c.token_ids
        torch.testing.assert_close(torch.tensor(a.logprobs), torch.tensor(b.logprobs), atol=1e-5, rtol=0)
        torch.testing.assert_close(torch.tensor(a.logprobs), torch.tensor(c.logprobs), atol=1e-5, rtol=0)


def test_unseeded_requests_differ(make_engine: EngineFactory, model: transformers.PreTrainedModel) -> None:
    request = GenerationRequest(_prompts((6,))[0], SamplingParams(max_new_tokens=6, temperature=1.0))
    engine = make_engine(model)
    first = engine.generate([request] * 8)
    second = engine.generate([request] * 8)
    assert len({c.token_ids for c in first + second}) > 8


def test_stop_token_ends_row_and_is_included(make_engine: EngineFactory, model: transformers.PreTrainedModel) -> None:
    prompts = _prompts((3, 17, 9, 25))
    engine = make_engine(model)
    free = engine.generate([GenerationRequest(p, GREEDY) for p in prompts])
    stop = free[0].token_ids[3]
    stopping = SamplingParams(max_new_tokens=GREEDY.max_new_tokens, temperature=0.0, stop_token_ids=(stop, VOCAB - 1))
    out = engine.generate([GenerationRequest(p, stopping) for p in prompts])
    for unstopped, completion in zip(free, out):
        hits = [i for i, t in enumerate(unstopped.token_ids) if t in stopping.stop_token_ids]
        if hits:
            assert completion.token_ids == unstopped.token_ids[: hits[0] + 1]
            assert completion.finish_reason == "stop"
        else:
            assert completion.token_ids == unstopped.token_ids
            assert completion.finish_reason == "length"
        assert len(completion.logprobs) == len(completion.token_ids)
    assert out[0].token_ids[-1] == stop and out[0].finish_reason == "stop"


def test_max_new_tokens_per_request(make_engine: EngineFactory, model: transformers.PreTrainedModel) -> None:
    prompts = _prompts((3, 17, 9))
    engine = make_engine(model)
    full = engine.generate([GenerationRequest(p, GREEDY) for p in prompts])
    lengths = (1, 4, 7)
    out = engine.generate(
        [GenerationRequest(p, SamplingParams(max_new_tokens=n, temperature=0.0)) for p, n in zip(prompts, lengths)]
    )
    for long, completion, n in zip(full, out, lengths):
        assert completion.token_ids == long.token_ids[:n]
        assert len(completion.logprobs) == n
        assert completion.finish_reason == "length"


@pytest.mark.parametrize("top_p", [1.0, 0.7])
def test_sampling_frequencies_match_policy(make_engine: EngineFactory, top_p: float) -> None:
    # 8 tokens and 2500 seeds: each frequency's std is <= 0.01, so 0.045 is a 4.5-sigma bound; the seeds are
    # fixed, so the test is deterministic and only a real bias fails it.
    small = _tiny_model("qwen2", vocab_size=8, seed=3)
    prompt, temperature, samples = (1, 5, 2, 7), 0.7, 2500
    with torch.no_grad():
        probs = torch.softmax(small(torch.tensor([prompt])).logits[0, -1].float() / temperature, dim=-1)
    assert probs.max() < 0.7 and (probs > 0.05).sum() >= 3  # the check is only meaningful for a spread-out law
    sorted_probs, order = probs.sort(descending=True)
    nucleus = torch.zeros(8, dtype=torch.bool)
    nucleus[order[sorted_probs.cumsum(0) - sorted_probs < top_p]] = True  # smallest set with mass >= top_p
    target = probs * nucleus / probs[nucleus].sum()

    params = SamplingParams(max_new_tokens=1, temperature=temperature, top_p=top_p)
    out = make_engine(small).generate([GenerationRequest(prompt, params, seed=s) for s in range(samples)])
    first = torch.tensor([c.token_ids[0] for c in out])
    frequencies = torch.bincount(first, minlength=8).float() / samples
    assert (frequencies - target).abs().max() < 0.045
    assert nucleus[first].all()
    # the reported log-prob is the untruncated policy's, whatever top_p cut
    torch.testing.assert_close(torch.tensor([c.logprobs[0] for c in out]), probs.log()[first], atol=1e-5, rtol=0)


def test_small_top_p_is_greedy(make_engine: EngineFactory, model: transformers.PreTrainedModel) -> None:
    prompts = _prompts((3, 17, 9))
    engine = make_engine(model)
    greedy = engine.generate([GenerationRequest(p, GREEDY) for p in prompts])
    narrow = SamplingParams(max_new_tokens=GREEDY.max_new_tokens, temperature=1.0, top_p=1e-3)
    out = engine.generate([GenerationRequest(p, narrow, seed=i) for i, p in enumerate(prompts)])
    for g, n in zip(greedy, out):
        assert n.token_ids == g.token_ids
        # both report the untruncated T = 1 log-prob
        torch.testing.assert_close(torch.tensor(n.logprobs), torch.tensor(g.logprobs), atol=1e-5, rtol=0)


def test_update_weights_changes_outputs_and_version(
    make_engine: EngineFactory, model: transformers.PreTrainedModel
) -> None:
    family = "qwen2" if isinstance(model, Qwen2ForCausalLM) else "llama"
    other = _tiny_model(family, VOCAB, seed=42)
    prompts = _prompts((3, 17, 9))
    engine = make_engine(model)
    before = engine.generate([GenerationRequest(p, GREEDY) for p in prompts])

    named = [(name, tensor.detach().clone()) for name, tensor in other.named_parameters()]  # tied: no lm_head
    engine.update_weights([named[: len(named) // 2], named[len(named) // 2 :]], version=7)
    after = engine.generate([GenerationRequest(p, GREEDY) for p in prompts])

    assert engine.weight_version == 7 and all(c.weight_version == 7 for c in after)
    assert [c.token_ids for c in after] != [c.token_ids for c in before]
    assert [list(c.token_ids) for c in after] == _hf_greedy(other, prompts, GREEDY.max_new_tokens)


@pytest.mark.parametrize(
    ("name", "shape", "match"),
    [("model.layers.0.not_a_weight", (64,), "not_a_weight"), ("model.norm.weight", (65,), "model.norm.weight")],
    ids=["unknown-name", "bad-shape"],
)
def test_update_weights_rejects_bad_tensor(
    make_engine: EngineFactory, model: transformers.PreTrainedModel, name: str, shape: tuple[int, ...], match: str
) -> None:
    engine = make_engine(model)
    with pytest.raises(ValueError, match=match):
        engine.update_weights([[(name, torch.zeros(shape))]], version=3)
    assert engine.weight_version == 0


def test_release_resume_round_trip(make_engine: EngineFactory, model: transformers.PreTrainedModel) -> None:
    requests = [GenerationRequest(p, GREEDY) for p in _prompts((3, 17))]
    engine = make_engine(model)
    assert engine.health()
    before = engine.generate(requests)
    engine.release_memory()
    assert not engine.health()
    with pytest.raises(RuntimeError, match="released"):
        engine.generate(requests)
    engine.resume_memory()
    assert engine.health()
    assert engine.generate(requests) == before


def test_generate_validates_requests(make_engine: EngineFactory, model: transformers.PreTrainedModel) -> None:
    engine = make_engine(model)
    assert engine.generate([]) == []
    with pytest.raises(ValueError, match=r"requests\[1\]"):
        engine.generate([GenerationRequest((1, 2), GREEDY), GenerationRequest((), GREEDY)])
    with pytest.raises(ValueError, match=r"requests\[0\]"):
        engine.generate([GenerationRequest((1, VOCAB), GREEDY)])
