"""OpenAI's request schema (the fields we honour) and its error shape, validated at the boundary."""

from __future__ import annotations

import json
from typing import Any, Literal

from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from erl_mega.gateway.template import Message, ToolCall, content_text


class GatewayError(Exception):
    """A request we refuse: becomes OpenAI's `{"error": {...}}` with this status."""

    def __init__(self, message: str, param: str | None = None, status: int = 400, code: str | None = None) -> None:
        super().__init__(message)
        self.message, self.param, self.status, self.code = message, param, status, code

    def response(self) -> JSONResponse:
        kind = "invalid_request_error" if self.status < 500 else "server_error"
        body = {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}
        return JSONResponse(body, status_code=self.status)


class _Request(BaseModel):
    """Fields shared by both endpoints; unknown fields are accepted and ignored, as clients send many."""

    model_config = ConfigDict(extra="ignore")

    model: str
    n: int = Field(1, ge=1, le=16)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    max_tokens: int | None = Field(None, ge=1)
    stop: str | list[str] | None = None
    stream: bool = False
    seed: int | None = None
    user: str | None = None

    def stops(self) -> tuple[str, ...]:
        found = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())
        if len(found) > 4 or any(not s for s in found):
            raise GatewayError("stop: at most 4 non-empty strings", "stop")
        return found


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None


class ChatRequest(_Request):
    messages: list[ChatMessage] = Field(min_length=1)
    tools: list[dict[str, Any]] | None = None
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=0)  # only the sampled token's log-prob is kept
    max_completion_tokens: int | None = Field(None, ge=1)

    def budget(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class CompletionRequest(_Request):
    prompt: str | list[int]
    logprobs: int | None = Field(None, ge=0, le=0)  # 0: the sampled tokens' log-probs; no alternatives
    echo: Literal[False] = False

    def budget(self) -> int | None:
        return self.max_tokens


def parse(cls: type[_Request], body: bytes) -> _Request:
    """The request body as `cls`, or a GatewayError naming the first bad field."""
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise GatewayError("the request body is not valid JSON") from None
    if not isinstance(data, dict):
        raise GatewayError("the request body must be a JSON object")
    try:
        return cls.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise GatewayError(f"{where}: {first['msg']}", where or None) from None


def to_messages(request: ChatRequest) -> tuple[str | None, tuple[Message, ...]]:
    """The leading system (or developer) message's text, and the rest as template messages."""
    system, rest = None, request.messages
    if rest[0].role in ("system", "developer"):
        system, rest = content_text(rest[0].content), rest[1:]
    out = []
    for i, m in enumerate(rest):
        if m.role in ("system", "developer"):
            raise GatewayError(f"messages[{i + (system is not None)}]: a system message is only allowed first", "messages")
        out.append(Message(m.role, content_text(m.content), _tool_calls(m, i)))
    if not out:
        raise GatewayError("messages: needs at least one message after the system message", "messages")
    return system, tuple(out)


def _tool_calls(m: ChatMessage, i: int) -> tuple[ToolCall, ...]:
    calls = []
    for j, call in enumerate(m.tool_calls or ()):
        fn = call.get("function") or {}
        try:
            args = json.loads(fn.get("arguments") or "{}")
        except (json.JSONDecodeError, TypeError):
            raise GatewayError(f"messages[{i}].tool_calls[{j}].function.arguments is not JSON", "messages") from None
        if not isinstance(fn.get("name"), str) or not isinstance(args, dict):
            raise GatewayError(f"messages[{i}].tool_calls[{j}] needs a function name and JSON-object arguments", "messages")
        calls.append(ToolCall.of(fn["name"], args))
    return tuple(calls)


def tool_specs(request: ChatRequest) -> tuple[tuple[dict, ...], frozenset[str]]:
    """The offered tools (rendered into the system message) and their names."""
    tools = tuple(request.tools or ())
    names = []
    for i, tool in enumerate(tools):
        name = (tool.get("function") or {}).get("name")
        if tool.get("type") != "function" or not isinstance(name, str):
            raise GatewayError(f"tools[{i}]: needs type 'function' and function.name", "tools")
        names.append(name)
    return tools, frozenset(names)
