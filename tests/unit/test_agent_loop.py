"""The agent loop's two schedules: per-episode (servers) samples exactly what batched-per-turn does, and
an episode never waits for the slowest of the batch."""

from __future__ import annotations

import dataclasses
import random
import threading
import time

import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from erl_mega.envs.frozenlake import FrozenLake
from erl_mega.rollout.agent_loop import EpisodeSpec, play_episodes
from erl_mega.rollout.engine import Completion, GenerationRequest, SamplingParams
from erl_mega.rollout.local import LocalEngine


class OneAtATime:
    """A ConcurrentEngine over any engine: one request per call from many threads, answered in random order."""

    def __init__(self, engine, delay=lambda request: random.uniform(0, 0.01)) -> None:
        self.engine, self.delay, self.weight_version = engine, delay, engine.weight_version
        self.lock = threading.Lock()
        self.log: list[tuple[str, str]] = []  # (event, session) in the order they happened

    def generate_one(self, request: GenerationRequest) -> Completion:
        with self.lock:
            self.log.append(("sent", request.session))
        time.sleep(self.delay(request))
        with self.lock:
            out = self.engine.generate([request])[0]
            self.log.append(("answered", request.session))
        return out

    def generate(self, requests):
        return [self.generate_one(r) for r in requests]


def _specs(n: int) -> list[EpisodeSpec]:
    return [EpisodeSpec(seed, "Reach the goal. Answer <action>dir</action>.", 10 + i) for i, seed in enumerate(range(n))]


@pytest.fixture(scope="module")
def local(chat):
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=len(chat.tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024, tie_word_embeddings=True)
    return LocalEngine(Qwen2ForCausalLM(config).eval(), chat.tokenizer.pad_token_id or 0, max_batch_size=8)


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_per_episode_schedule_samples_what_the_batched_one_does(chat, local, temperature):
    params = SamplingParams(6, temperature, stop_token_ids=chat.stop_ids)
    make = lambda: FrozenLake(max_turns=4)  # noqa: E731
    batched = play_episodes(make, local, chat, _specs(6), params, 1024)
    independent = play_episodes(make, OneAtATime(local), chat, _specs(6), params, 1024)
    for a, b in zip(batched, independent):
        assert a.token_ids() == b.token_ids() and a.loss_mask() == b.loss_mask() and a.turns == b.turns
        torch.testing.assert_close(torch.tensor(a.rollout_logprobs()), torch.tensor(b.rollout_logprobs()), atol=1e-5, rtol=0)
    assert sum(len(t.turns) for t in batched) > len(batched)  # multi-turn episodes were compared


def test_an_episode_does_not_wait_for_the_slowest(chat, scripted):
    slow = "episode-10"  # the first spec's session: its first reply takes 0.5 s, every other reply none
    engine = OneAtATime(scripted(lambda text: "<action>left</action>"),
                        delay=lambda r: 0.5 if r.session == slow and len(r.prompt_ids) < 80 else 0.0)
    trajectories = play_episodes(lambda: FrozenLake(max_turns=4), engine, chat, _specs(3),
                                 SamplingParams(8, stop_token_ids=chat.stop_ids), 4096)
    first_slow_answer = engine.log.index(("answered", slow))
    others_done = [e for e in engine.log[:first_slow_answer] if e[0] == "answered" and e[1] != slow]
    assert len(others_done) == 2 * 4  # both fast episodes played all their turns meanwhile
    assert all(len(t.turns) == 4 for t in trajectories)


def test_an_episode_is_as_old_as_its_oldest_reply(chat, scripted):
    engine = OneAtATime(scripted(lambda text: "<action>left</action>"))
    versions = iter([3, 4, 4, 5])

    def versioned(request):
        return dataclasses.replace(engine.engine.generate([request])[0], weight_version=next(versions))

    engine.generate_one = versioned
    (trajectory,) = play_episodes(lambda: FrozenLake(max_turns=4), engine, chat, _specs(1),
                                  SamplingParams(8, stop_token_ids=chat.stop_ids), 4096)
    assert len(trajectory.turns) == 4 and trajectory.weight_version == 3
