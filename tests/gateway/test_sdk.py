"""Agents from other frameworks through the gateway process: their episodes are exactly what the server sampled."""

import httpx
import openai
import pytest

from erl_mega.agents.langgraph_qa import build_graph, langgraph_qa
from erl_mega.agents.openai_qa import SEARCH_TOOL, openai_qa
from erl_mega.envs.base import make_env, task_seed
from erl_mega.model.hf_io import load_tokenizer
from erl_mega.rollout.agent_loop import EpisodeSpec
from erl_mega.sdk import Episode, Sampling, agent

pytestmark = pytest.mark.slow
GREEDY = Sampling(temperature=0.0, top_p=1.0, max_tokens=48)


def sampled(trajectory):
    return [list(s.token_ids) for s in trajectory.segments if s.sampled]


def test_langgraph_episode_is_token_exact_across_tool_turns(tool_gateway):
    """The server's `token_ids` for each call, seen on the wire, are the trajectory's sampled segments, in order."""
    responses = []

    def keep(response: httpx.Response) -> None:
        if response.url.path.endswith("/chat/completions"):
            response.read()
            responses.append(response.json())

    @agent
    def wired(ctx):
        client = httpx.Client(event_hooks={"response": [keep]})
        for state in build_graph(ctx, http_client=client).stream({"messages": [("user", ctx.task)]}, stream_mode="values"):
            if ctx.done:
                return None
        return state["messages"][-1].content

    env = make_env("hotpotqa", max_turns=3)
    tr = wired.run(tool_gateway, env, EpisodeSpec(task_seed("train", 1), "Answer the question.", 5), GREEDY)
    assert len(responses) == 3 and all(r["choices"][0]["finish_reason"] == "tool_calls" for r in responses)
    assert sampled(tr) == [r["choices"][0]["token_ids"] for r in responses]
    assert [t.reply for t in tr.turns] == ["<search>x</search>"] * 3 and tr.turns[-1].reward == 0.0
    assert "no answer within 3 turns" in tr.feedback and tr.reward == 0.0
    assert tr.meta["prefix_mismatches"] == 0 and tr.meta["calls"] == 3 and tr.meta["calls_outside_trajectory"] == 0
    assert tr.loss_mask().count(1) == sum(len(r["choices"][0]["token_ids"]) for r in responses)
    assert tr.meta["task"].startswith("Question:") and tr.temperature == 0.0 and tr.weight_version == 0


def test_bundled_agents_play_whole_episodes(tool_gateway):
    for bundled in (langgraph_qa, openai_qa):
        tr = bundled.run(tool_gateway, make_env("hotpotqa", max_turns=2), EpisodeSpec(task_seed("train", 2), "Answer.", 1),
                         GREEDY)
        assert len(tr.turns) == 2 and len(sampled(tr)) == 2 and tr.meta["prefix_mismatches"] == 0, bundled.name


def test_streaming_langgraph_agent_chains_its_tool_turns(tool_gateway):
    """ChatOpenAI(streaming=True) rebuilds tool calls from the gateway's chunks and sends them back as sampled."""

    @agent
    def streamed(ctx):
        for _ in build_graph(ctx, streaming=True).stream({"messages": [("user", ctx.task)]}, stream_mode="values"):
            if ctx.done:
                return None
        return None

    tr = streamed.run(tool_gateway, make_env("hotpotqa", max_turns=3), EpisodeSpec(task_seed("train", 4), "Answer.", 1), GREEDY)
    assert len(tr.turns) == 3 and len(sampled(tr)) == 3 and tr.meta["prefix_mismatches"] == 0


def test_edited_history_is_a_reported_prefix_mismatch(tool_gateway, tool_checkpoint):
    """An agent that rewrites an earlier reply gets its prompt tokenised afresh, counted, and kept out of the chain."""
    env = make_env("hotpotqa", max_turns=4)
    episode = Episode(tool_gateway, env, task_seed("train", 3), "Answer.", GREEDY)
    with episode as ctx:
        client = openai.OpenAI(base_url=ctx.base_url, api_key=ctx.api_key, default_headers=ctx.headers)
        messages = [{"role": "system", "content": "ignored: the episode's prompt wins"}, {"role": "user", "content": ctx.task}]
        origins = []
        for edit in (False, False, True):
            raw = client.chat.completions.with_raw_response.create(model=ctx.model, messages=messages, tools=[SEARCH_TOOL])
            origins.append(raw.headers["X-Prompt-Origin"])
            call = raw.parse().choices[0].message.tool_calls[0]
            arguments = '{"query": "edited"}' if edit else call.function.arguments
            messages.append({"role": "assistant", "content": None, "tool_calls": [
                {"id": call.id, "type": "function", "function": {"name": "search", "arguments": arguments}}]})
            messages.append({"role": "tool", "tool_call_id": call.id, "content": ctx.step("<search>x</search>").observation.text})
        origins.append(client.chat.completions.with_raw_response.create(
            model=ctx.model, messages=messages, tools=[SEARCH_TOOL]).headers["X-Prompt-Origin"])
    tr = episode.trajectory
    assert origins == ["fresh", "reused", "reused", "mismatch"]
    # the chain keeps calls 1, 2 and 4: the edited reply is context in the last prompt, never a sampled segment
    assert tr.meta["prefix_mismatches"] == 1 and tr.meta["calls"] == 4 and tr.meta["calls_outside_trajectory"] == 1
    tokenizer = load_tokenizer(tool_checkpoint)
    assert len(sampled(tr)) == 3 and "edited" in tokenizer.decode(tr.segments[-2].token_ids)
    system = tokenizer.decode(tr.segments[0].token_ids)  # the episode's prompt replaced the agent's, tools listed after it
    assert system.startswith("<|im_start|>system\nAnswer.\n\n# Tools") and "ignored" not in system
