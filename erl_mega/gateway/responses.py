"""OpenAI response bodies and server-sent-event chunks for chat and text completions."""

from __future__ import annotations

import json
import time
import uuid
from typing import Iterator

from erl_mega.gateway.sampling import Choice
from erl_mega.gateway.template import ParsedReply, openai_tool_calls
from erl_mega.rollout.chat import ChatFormat


def fingerprint(version: int) -> str:
    """The weight version as OpenAI's `system_fingerprint`: an agent sees when the policy changed."""
    return f"weights-v{version}"


def _finish(choice: Choice, parsed: ParsedReply | None) -> str:
    return "tool_calls" if parsed is not None and parsed.tool_calls else choice.finish_reason


def _usage(prompt_tokens: int, choices: list[Choice]) -> dict:
    completion = sum(len(c.token_ids) for c in choices)
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion, "total_tokens": prompt_tokens + completion}


def _chat_logprobs(choice: Choice, chat: ChatFormat) -> dict:
    pieces = [chat.tokenizer.decode([t]) for t in choice.token_ids]
    return {"content": [{"token": p, "logprob": lp, "bytes": list(p.encode()), "top_logprobs": []}
                        for p, lp in zip(pieces, choice.logprobs)]}


def _message(parsed: ParsedReply) -> dict:
    if not parsed.tool_calls:
        return {"role": "assistant", "content": parsed.content}
    return {"role": "assistant", "content": parsed.content or None, "tool_calls": openai_tool_calls(parsed.tool_calls)}


def chat_body(model: str, prompt_tokens: int, choices: list[Choice], parsed: list[ParsedReply], logprobs: bool,
              chat: ChatFormat) -> dict:
    """A `chat.completion` object; each choice also carries the sampled `token_ids` (an extension)."""
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
        "model": model, "system_fingerprint": fingerprint(choices[0].weight_version),
        "choices": [{"index": i, "message": _message(p), "finish_reason": _finish(c, p), "token_ids": list(c.token_ids),
                     "logprobs": _chat_logprobs(c, chat) if logprobs else None}
                    for i, (c, p) in enumerate(zip(choices, parsed))],
        "usage": _usage(prompt_tokens, choices),
    }


def text_pieces(choice: Choice, chat: ChatFormat, text: str) -> list[str]:
    """`text` cut where each sampled token ends (incremental decoding), so the pieces join to exactly `text`."""
    pieces, at = [], 0
    for k in range(1, len(choice.token_ids) + 1):
        end = min(len(chat.decode(choice.token_ids[:k])), len(text))
        if end > at:
            pieces.append(text[at:end])
            at = end
    return pieces + ([text[at:]] if at < len(text) else [])


def _sse(obj: dict) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


def chat_chunks(body: dict, choices: list[Choice], parsed: list[ParsedReply], chat: ChatFormat) -> Iterator[str]:
    """The finished completion replayed as `chat.completion.chunk` events: content per token, tool calls whole."""
    base = {"id": body["id"], "object": "chat.completion.chunk", "created": body["created"], "model": body["model"],
            "system_fingerprint": body["system_fingerprint"]}
    for i, (c, p) in enumerate(zip(choices, parsed)):
        yield _sse(base | {"choices": [{"index": i, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]})
        for piece in text_pieces(c, chat, p.content):
            yield _sse(base | {"choices": [{"index": i, "delta": {"content": piece}, "finish_reason": None}]})
        calls = body["choices"][i]["message"].get("tool_calls") or []
        if calls:
            delta = {"tool_calls": [call | {"index": j} for j, call in enumerate(calls)]}
            yield _sse(base | {"choices": [{"index": i, "delta": delta, "finish_reason": None}]})
        yield _sse(base | {"choices": [{"index": i, "delta": {}, "finish_reason": _finish(c, p)}]})
    yield "data: [DONE]\n\n"


def text_body(model: str, prompt_tokens: int, choices: list[Choice], logprobs: bool, chat: ChatFormat) -> dict:
    """A `text_completion` object; `logprobs` lists the sampled tokens' log-probs (no alternatives)."""
    def lp(c: Choice) -> dict:
        pieces = [chat.tokenizer.decode([t]) for t in c.token_ids]
        offsets = [sum(len(p) for p in pieces[:k]) for k in range(len(pieces))]
        return {"tokens": pieces, "token_logprobs": list(c.logprobs), "top_logprobs": None, "text_offset": offsets}

    return {
        "id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()), "model": model,
        "system_fingerprint": fingerprint(choices[0].weight_version),
        "choices": [{"index": i, "text": c.text, "finish_reason": c.finish_reason, "token_ids": list(c.token_ids),
                     "logprobs": lp(c) if logprobs else None} for i, c in enumerate(choices)],
        "usage": _usage(prompt_tokens, choices),
    }


def text_chunks(body: dict, choices: list[Choice], chat: ChatFormat) -> Iterator[str]:
    """The finished text completion replayed as events, one per sampled token's text."""
    base = {"id": body["id"], "object": "text_completion", "created": body["created"], "model": body["model"]}
    for i, c in enumerate(choices):
        for piece in text_pieces(c, chat, c.text):
            yield _sse(base | {"choices": [{"index": i, "text": piece, "finish_reason": None, "logprobs": None}]})
        yield _sse(base | {"choices": [{"index": i, "text": "", "finish_reason": c.finish_reason, "logprobs": None}]})
    yield "data: [DONE]\n\n"
