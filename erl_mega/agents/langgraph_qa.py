"""A LangGraph ReAct agent for multi-hop QA (env=hotpotqa): ChatOpenAI on the gateway, BM25 search as its tool.

    erl-mega train agent=langgraph_qa        # ERL trains it; the gateway records its token-exact episodes

Nothing here knows about training: the agent talks to an OpenAI-compatible URL, the search tool plays
the environment's `<search>` action, and the final message (`\\boxed{answer}`) is the answer it scores.
"""

from __future__ import annotations

from langchain_core.messages import AIMessage, SystemMessage
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI
from langgraph.errors import GraphRecursionError
from langgraph.graph import START, MessagesState, StateGraph
from langgraph.prebuilt import ToolNode, tools_condition

from erl_mega.sdk import AgentContext, agent


def build_graph(ctx: AgentContext, **chat_options):
    """The ReAct graph: the model on the gateway (this episode's id in every call's headers) and the search tool.

    `chat_options` go to ChatOpenAI as they are (an `http_client`, a `timeout`).
    """

    @tool
    def search(query: str) -> str:
        """Search the passage corpus (BM25) and return the best-matching passages."""
        return ctx.step(f"<search>{query}</search>").observation.text

    model = ChatOpenAI(base_url=ctx.base_url, api_key=ctx.api_key, model=ctx.model, default_headers=ctx.headers,
                       max_retries=0, **chat_options).bind_tools([search])

    def call_model(state: MessagesState) -> dict:
        return {"messages": [model.invoke([SystemMessage(ctx.system_prompt)] + state["messages"])]}

    graph = StateGraph(MessagesState)
    graph.add_node("model", call_model)
    graph.add_node("tools", ToolNode([search]))
    graph.add_edge(START, "model")
    graph.add_conditional_edges("model", tools_condition)  # a tool call goes to the tools, an answer ends the run
    graph.add_edge("tools", "model")
    return graph.compile()


@agent
def langgraph_qa(ctx: AgentContext) -> str | None:
    """Run the graph until the model answers without a tool call or the environment ends the episode."""
    last = None
    try:
        # each turn is a model step and a tool step; two more let the model answer after the last search
        for state in build_graph(ctx).stream({"messages": [("user", ctx.task)]}, {"recursion_limit": 2 * ctx.max_turns + 2},
                                             stream_mode="values"):
            if ctx.done:
                return None
            last = state["messages"][-1]
    except GraphRecursionError:
        return None
    return last.content if isinstance(last, AIMessage) and not last.tool_calls else None
