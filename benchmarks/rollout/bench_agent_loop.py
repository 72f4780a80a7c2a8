"""python benchmarks/rollout/bench_agent_loop.py [--episodes 64 --servers 2 --repeats 2] [overrides, e.g. env.max_turns=8]

Episodes per second of the multi-turn agent loop on the quick start's policy and environment (the
embedded base policy, FrozenLake, T=1, the same episode seeds every time), three ways side by side:
  in-process    the synchronous loop: every turn one batched `generate` on a LocalEngine in this process;
  router/turn   the same batched-per-turn schedule, through the router over `--servers` embedded servers;
  router/async  the asynchronous loop through the router: each episode sends its next turn as soon as its
                last reply was played (erl_mega/rollout/agent_loop.py).
Best of `--repeats` after one warm-up pass each; the load average before and after is printed because the
machine may be shared. Prints a table and a last line of JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from tempfile import TemporaryDirectory

import torch
from rich.console import Console
from transformers import AutoModelForCausalLM

from erl_mega.algo.prompts import with_action_format
from erl_mega.cli import load_config
from erl_mega.envs.base import make_env, task_seed
from erl_mega.model.hf_io import load_hf_config, load_tokenizer
from erl_mega.rollout.agent_loop import EpisodeSpec, play_episodes
from erl_mega.rollout.chat import ChatFormat
from erl_mega.rollout.client import ServerClient
from erl_mega.rollout.engine import SamplingParams
from erl_mega.rollout.local import LocalEngine
from erl_mega.rollout.router import Router
from erl_mega.rollout.server.process import ServerProcess
from erl_mega.run import resolve_policy


class PerTurn:
    """The router seen as a batch-only engine, so the agent loop keeps its batched-per-turn schedule."""

    def __init__(self, router: Router) -> None:
        self.router = router

    @property
    def weight_version(self) -> int:
        return self.router.weight_version

    def generate(self, requests):
        return self.router.generate(requests)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--episodes", type=int, default=64)
    parser.add_argument("--servers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    args, overrides = parser.parse_known_args()
    cfg = load_config(overrides)
    policy = resolve_policy(cfg, Console())
    tokenizer = load_tokenizer(policy)
    chat = ChatFormat(tokenizer)
    make = lambda: make_env(cfg.env.name, max_turns=cfg.env.max_turns, **cfg.env.options)  # noqa: E731
    system = with_action_format(cfg.env.initial_prompt, make().action_format)
    specs = [EpisodeSpec(task_seed("train", i), system, 1000 + i) for i in range(args.episodes)]
    params = SamplingParams(cfg.rollout.max_new_tokens, 1.0, 1.0, chat.stop_ids)
    context = load_hf_config(policy).max_position_embeddings
    load_before = os.getloadavg()

    def timed(engine) -> tuple[float, int]:
        play_episodes(make, engine, chat, specs, params, context)  # warm-up
        best, turns = float("inf"), 0
        for _ in range(args.repeats):
            start = time.perf_counter()
            episodes = play_episodes(make, engine, chat, specs, params, context)
            best = min(best, time.perf_counter() - start)
            turns = sum(len(e.turns) for e in episodes)
        return best, turns

    local = LocalEngine(AutoModelForCausalLM.from_pretrained(policy, dtype=torch.float32), tokenizer.pad_token_id,
                        cfg.rollout.max_batch_size)
    results = {"in-process": timed(local)}
    with TemporaryDirectory() as logs:
        procs = [ServerProcess.embedded(str(policy), log_path=Path(logs) / f"server{i}.log",
                                        max_batch_size=cfg.rollout.max_batch_size, pad_token_id=tokenizer.pad_token_id)
                 for i in range(args.servers)]
        try:
            for p in procs:
                p.start(wait=False)
            for p in procs:
                p.wait_healthy()
            router = Router([ServerClient(p.url) for p in procs], procs)
            results["router/turn"] = timed(PerTurn(router))
            results["router/async"] = timed(router)
        finally:
            for p in procs:
                p.stop()
    load_after = os.getloadavg()
    base = args.episodes / results["in-process"][0]
    print(f"{args.episodes} episodes, {args.servers} servers, load average {load_before[0]:.1f} before / {load_after[0]:.1f} after")
    print(f"| loop | seconds | episodes/s | turns | vs in-process |\n|---|---|---|---|---|")
    for name, (seconds, turns) in results.items():
        print(f"| {name} | {seconds:.2f} | {args.episodes / seconds:.1f} | {turns} | {args.episodes / seconds / base:.2f}x |")
    print(json.dumps({"episodes": args.episodes, "servers": args.servers, "load_before": load_before[0],
                      "load_after": load_after[0],
                      **{f"{name}_episodes_per_s": args.episodes / s for name, (s, _) in results.items()}}))


if __name__ == "__main__":
    main()
