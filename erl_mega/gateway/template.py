"""OpenAI chat messages as ChatML text with Qwen2-style tools, and the model's `<tool_call>` output parsed back.

The rendering follows Qwen2.5's chat template: tools are listed in the system message inside `<tools>`,
an assistant's tool calls are `<tool_call>\\n{"name": ..., "arguments": ...}\\n</tool_call>` blocks, and
consecutive `tool` messages become one user message of `<tool_response>` blocks. Plain conversations
render exactly as `ChatFormat` does, so gateway traces and native trajectories tokenise alike.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass

from erl_mega.rollout.chat import IM_END, IM_START

TOOL_CALL_RE = re.compile(r"<tool_call>(.*?)</tool_call>", re.DOTALL)
TOOLS_PREAMBLE = (
    "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n"
)
TOOLS_CLOSING = (
    "\n</tools>\n\nFor each function call, return a json object with function name and arguments within "
    '<tool_call></tool_call> XML tags:\n<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n'
    "</tool_call>"
)
GENERATION_PROMPT = f"{IM_START}assistant\n"


@dataclass(frozen=True)
class ToolCall:
    """One function call: its name and its JSON arguments, compared by value, not by spelling."""

    name: str
    arguments: str  # canonical JSON (sorted keys) of the arguments object

    @staticmethod
    def of(name: str, arguments: dict) -> "ToolCall":
        return ToolCall(name, json.dumps(arguments, sort_keys=True, ensure_ascii=False))


@dataclass(frozen=True)
class Message:
    """A chat message reduced to what the template renders: the key under which sampled ids are reused."""

    role: str
    content: str
    tool_calls: tuple[ToolCall, ...] = ()


def content_text(content: object) -> str:
    """OpenAI content (None, a string, or a list of `{"type": "text"}` parts) as one string."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(part.get("text", "") for part in content if isinstance(part, dict))


def render_system(content: str, tools: tuple[dict, ...]) -> str:
    """The system message, with the tools' signatures appended when any are offered."""
    if tools:
        listed = "\n".join(json.dumps(t, ensure_ascii=False) for t in tools)
        content = f"{content}\n\n{TOOLS_PREAMBLE}{listed}{TOOLS_CLOSING}" if content else f"{TOOLS_PREAMBLE}{listed}{TOOLS_CLOSING}"
    return f"{IM_START}system\n{content}{IM_END}\n"


def render_assistant_body(message: Message) -> str:
    """An assistant message's text as the model writes it, without the header and the closing token."""
    parts = [message.content] if message.content else []
    for call in message.tool_calls:
        args = json.dumps(json.loads(call.arguments), ensure_ascii=False)
        parts.append(f'<tool_call>\n{{"name": "{call.name}", "arguments": {args}}}\n</tool_call>')
    return "\n".join(parts)


def render_messages(messages: tuple[Message, ...]) -> str:
    """Messages (no system message among them) as ChatML text; tool results group into one user turn."""
    out, i = [], 0
    while i < len(messages):
        m = messages[i]
        if m.role == "tool":
            responses = []
            while i < len(messages) and messages[i].role == "tool":
                responses.append(f"<tool_response>\n{messages[i].content}\n</tool_response>")
                i += 1
            out.append(f"{IM_START}user\n" + "\n".join(responses) + f"{IM_END}\n")
            continue
        body = render_assistant_body(m) if m.role == "assistant" else m.content
        out.append(f"{IM_START}{m.role}\n{body}{IM_END}\n")
        i += 1
    return "".join(out)


@dataclass(frozen=True)
class ParsedReply:
    """A sampled reply split into content and tool calls; `tool_calls` is empty when none parsed."""

    content: str
    tool_calls: tuple[ToolCall, ...]

    def message(self) -> Message:
        return Message("assistant", self.content, self.tool_calls)


def parse_reply(text: str, tool_names: frozenset[str]) -> ParsedReply:
    """Tool calls out of the model's text; any malformed or unknown call leaves the whole text as content."""
    blocks = TOOL_CALL_RE.findall(text)
    if not blocks or not tool_names:
        return ParsedReply(text, ())
    calls = []
    for block in blocks:
        try:
            data = json.loads(block)
        except json.JSONDecodeError:
            return ParsedReply(text, ())
        args = data.get("arguments") if isinstance(data, dict) else None
        if isinstance(args, str):
            try:
                args = json.loads(args)
            except json.JSONDecodeError:
                return ParsedReply(text, ())
        if not isinstance(args, dict) or data.get("name") not in tool_names:
            return ParsedReply(text, ())
        calls.append(ToolCall.of(data["name"], args))
    return ParsedReply(text[: text.index("<tool_call>")].strip(), tuple(calls))


def openai_tool_calls(calls: tuple[ToolCall, ...]) -> list[dict]:
    """Tool calls in OpenAI's response shape, each with a fresh id."""
    return [
        {"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
         "function": {"name": c.name, "arguments": json.dumps(json.loads(c.arguments), ensure_ascii=False)}}
        for c in calls
    ]
