"""A plain `openai`-client agent for multi-hop QA (env=hotpotqa): a tool-calling loop in a dozen lines.

    erl-mega train agent=openai_qa
"""

from __future__ import annotations

import json

from openai import OpenAI

from erl_mega.sdk import AgentContext, agent

SEARCH_TOOL = {"type": "function", "function": {
    "name": "search", "description": "Search the passage corpus (BM25) and return the best-matching passages.",
    "parameters": {"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]}}}


@agent
def openai_qa(ctx: AgentContext) -> str | None:
    """Call the model; run its searches as tool results; its first reply without a tool call is the answer."""
    client = OpenAI(base_url=ctx.base_url, api_key=ctx.api_key, default_headers=ctx.headers, max_retries=0)
    messages = [{"role": "system", "content": ctx.system_prompt}, {"role": "user", "content": ctx.task}]
    while not ctx.done:
        reply = client.chat.completions.create(model=ctx.model, messages=messages, tools=[SEARCH_TOOL]).choices[0].message
        if not reply.tool_calls:
            return reply.content
        messages.append({"role": "assistant", "content": reply.content,
                         "tool_calls": [c.model_dump(include={"id", "type", "function"}) for c in reply.tool_calls]})
        for call in reply.tool_calls:
            query = json.loads(call.function.arguments).get("query") or ""
            result = ctx.step(f"<search>{query}</search>")
            messages.append({"role": "tool", "tool_call_id": call.id, "content": result.observation.text})
    return None
