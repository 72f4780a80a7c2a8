"""Fixtures for the algorithm's unit tests: a small ChatML tokenizer and a scripted rollout engine."""

from __future__ import annotations

from typing import Callable

import pytest

from erl_mega.model.tokenizer import train_tokenizer
from erl_mega.rollout.chat import ChatFormat
from erl_mega.rollout.engine import Completion, GenerationRequest


@pytest.fixture(scope="session")
def chat() -> ChatFormat:
    texts = ["<action>up</action> <action>down</action> <action>left</action> <action>right</action> x . * @"] * 20
    return ChatFormat(train_tokenizer(texts, vocab_size=300))


class ScriptedEngine:
    """Answers each request with `script(prompt_text)`; log-probs are a fixed -0.5 per token."""

    def __init__(self, chat: ChatFormat, script: Callable[[str], str]) -> None:
        self.chat, self.script, self.weight_version = chat, script, 7
        self.requests: list[GenerationRequest] = []

    def generate(self, requests: list[GenerationRequest]) -> list[Completion]:
        self.requests += requests
        out = []
        for r in requests:
            ids = self.chat.reply(self.script(self.chat.tokenizer.decode(list(r.prompt_ids))))
            out.append(Completion(ids, (-0.5,) * len(ids), "stop", self.weight_version))
        return out

    def update_weights(self, buckets, version: int) -> None:
        self.weight_version = version

    def release_memory(self) -> None:
        pass

    def resume_memory(self) -> None:
        pass

    def health(self) -> bool:
        return True


@pytest.fixture
def scripted(chat):
    return lambda script: ScriptedEngine(chat, script)
