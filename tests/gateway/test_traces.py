"""Trace capture without a server: which prompts reuse sampled ids, and which are reported as prefix mismatches."""

import pytest

from erl_mega.gateway.sampling import CallSpec, Choice, record
from erl_mega.gateway.template import Message, ToolCall, render_system
from erl_mega.gateway.traces import EpisodeTrace
from erl_mega.model.tokenizer import train_tokenizer
from erl_mega.rollout.chat import ChatFormat


@pytest.fixture(scope="module")
def chat():
    return ChatFormat(train_tokenizer(["<|im_start|>user\nQuestion: who? search tool_call"] * 10, vocab_size=300))


def reply(episode, chat, head, history, text, call=None):
    """Record a sampled reply to `history` as the gateway does; returns the message the agent will send back."""
    prompt = episode.chat_prompt(chat, head, history)
    ids = chat.encode(text) + (chat.im_end_id,)
    message = Message("assistant", text, (call,) if call else ())
    record(episode, CallSpec(prompt, 1, 1.0, 1.0, None, (), None), Choice(ids, (-0.5,) * len(ids), text, text, "stop", 0),
           head, history, message, "", chat)
    return prompt, message


def test_reuse_then_edit_is_counted_and_never_sampled(chat):
    episode, head = EpisodeTrace(), render_system("Answer.", ())
    history = (Message("user", "Question: who?"),)
    first, a1 = reply(episode, chat, head, history, "search one")
    history += (a1, Message("user", "more"))
    second, a2 = reply(episode, chat, head, history, "search two")
    assert (first.origin, second.origin) == ("fresh", "reused") and second.parent == 0
    assert second.ids[: len(first.ids)] == first.ids  # the first call's prompt and sampled ids, as they were
    edited = history + (Message("assistant", "search TWO"), Message("user", "again"))
    third = episode.chat_prompt(chat, head, edited)
    assert third.origin == "mismatch" and third.parent == 0 and episode.prefix_mismatches == 1
    assert not third.segments[-1].sampled  # the edited turn is context only
    assert episode.chat_prompt(chat, render_system("Other.", ()), history).origin == "mismatch"  # another system text


def test_tool_call_replies_match_by_value(chat):
    episode, head = EpisodeTrace(), render_system("Answer.", ())
    history = (Message("user", "Question: who?"),)
    _, sent = reply(episode, chat, head, history, "", ToolCall.of("search", {"query": "x", "k": 2}))
    back = Message("assistant", "", (ToolCall.of("search", {"k": 2, "query": "x"}),))  # keys in another order
    assert episode.chat_prompt(chat, head, history + (back, Message("tool", "passages"))).origin == "reused"
