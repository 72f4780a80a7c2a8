"""A tiny ChatML checkpoint taught (a few seconds of SFT) to answer every prompt with one `search` tool call.

Random weights never emit a well-formed tool call; this one does, greedily, so a ReAct agent through the
gateway runs tool turns until the environment ends the episode. Its prompts are the real thing: the QA
environment's questions and passages under a system message that lists the search tool.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from erl_mega.config.schema import TinyModelConfig
from erl_mega.envs.base import make_env, task_seed
from erl_mega.gateway.template import GENERATION_PROMPT, TOOLS_CLOSING, TOOLS_PREAMBLE, Message, ToolCall, render_messages, render_system
from erl_mega.model.hf_io import save_hf_checkpoint
from erl_mega.model.tiny import init_tiny_state, tiny_config
from erl_mega.model.tokenizer import train_tokenizer
from erl_mega.rollout.chat import IM_END

TOOL = {"type": "function", "function": {"name": "search", "description": "Search the passage corpus.",
                                         "parameters": {"type": "object", "properties": {"query": {"type": "string"}}}}}
CALL = ToolCall.of("search", {"query": "x"})
REPLY = '<tool_call>\n{"name": "search", "arguments": {"query": "x"}}\n</tool_call>'


def _prompts(count: int) -> list[str]:
    """QA prompts with 0-3 earlier search rounds, rendered as the gateway renders them."""
    env = make_env("hotpotqa", max_turns=8)
    out = []
    for i in range(count):
        question = env.reset(task_seed("train", i)).text
        messages = [Message("user", question)]
        for _ in range(i % 4):
            messages += [Message("assistant", "", (CALL,)), Message("tool", env.step("<search>x</search>").observation.text)]
        out.append(render_system(f"Answer the question. {i}", (TOOL,)) + render_messages(tuple(messages)) + GENERATION_PROMPT)
    return out


def make_tool_model(path: Path, steps: int = 120) -> Path:
    """Train the tokenizer on the prompts, then fit the model to emit REPLY after each; save as an HF directory."""
    prompts = _prompts(24)
    tokenizer = train_tokenizer(prompts + [TOOLS_PREAMBLE + json.dumps(TOOL) + TOOLS_CLOSING, REPLY] * 4, vocab_size=1000)
    shape = TinyModelConfig(hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=128,
                            vocab_size=1000, max_position=4096)
    config = tiny_config(shape, tokenizer)
    save_hf_checkpoint(path, config, init_tiny_state(config, seed=0), tokenizer)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    target = tokenizer.encode(REPLY + IM_END, add_special_tokens=False)
    rows = [tokenizer.encode(p, add_special_tokens=False) for p in prompts]
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for step in range(steps):
        batch = [rows[(step * 4 + k) % len(rows)] for k in range(4)]
        width = max(map(len, batch)) + len(target)
        ids = torch.full((4, width), tokenizer.pad_token_id)
        labels = torch.full((4, width), -100)
        for k, prompt in enumerate(batch):
            ids[k, : len(prompt) + len(target)] = torch.tensor(prompt + target)
            labels[k, len(prompt) : len(prompt) + len(target)] = torch.tensor(target)
        loss = model(input_ids=ids, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    state = {k: v.detach().clone() for k, v in model.state_dict().items() if k != "lm_head.weight"}
    return save_hf_checkpoint(path, config, state, tokenizer)
