"""The bundled LangGraph QA agent, recording what each response told it (for the ERL-step test): `recording_agent:recording_qa`."""

from __future__ import annotations

import httpx

from erl_mega.agents.langgraph_qa import build_graph
from erl_mega.sdk import AgentContext, agent

SEEN: list[dict] = []  # per model call: the weights that answered it, as the agent saw them, and the prompt it was given


@agent
def recording_qa(ctx: AgentContext) -> str | None:
    def keep(response: httpx.Response) -> None:
        if response.url.path.endswith("/chat/completions"):
            response.read()
            SEEN.append({"fingerprint": response.json()["system_fingerprint"], "system_prompt": ctx.system_prompt,
                         "header": response.headers["X-Weight-Version"]})

    graph = build_graph(ctx, http_client=httpx.Client(event_hooks={"response": [keep]}))
    for _ in graph.stream({"messages": [("user", ctx.task)]}, {"recursion_limit": 2 * ctx.max_turns + 2}):
        if ctx.done:
            return None
    return None
