"""Does the embedded base policy condition its move on the state? Teacher-forced move accuracy by situation.

    python benchmarks/probe_move_accuracy.py [overrides, e.g. model.cache_dir=DIR]

Fresh demonstrations (the warm-up's generator and episode count, another seed) are scored by the base
policy: at every move of every demonstrated attempt, the policy's likeliest of the four move words against
the demonstrator's, grouped by prompt (initial / stating facts) and situation (first move, right after a move
that did not move the agent, any other). Beside each accuracy, the share of the group's most common move: a
policy that ignores the state scores that, no more. Builds the base policy first if it is not cached.
"""

from __future__ import annotations

import collections
import sys

import torch
from rich.console import Console
from transformers import AutoModelForCausalLM

from erl_mega.cli import load_config
from erl_mega.envs.base import make_env
from erl_mega.model.demos import MOVES, demonstrations
from erl_mega.rollout.chat import ChatFormat
from erl_mega.run import build

SEED = 12345  # the demonstrations' seed: not the warm-up's (0), so the episodes are fresh


def situation(step: int, previous_observation: str) -> str:
    if step == 0:
        return "first move"
    return "after a blocked move" if "did not move" in previous_observation or "No effect" in previous_observation else "other"


def main(overrides: list[str]) -> None:
    cfg = load_config(overrides)
    c = build(cfg, Console())
    model = AutoModelForCausalLM.from_pretrained(c.policy_dir).eval()
    chat: ChatFormat = c.chat
    move_ids = [chat.tokenizer.encode(m) for m in MOVES]
    if any(len(ids) != 1 for ids in move_ids):
        raise SystemExit(f"each move word must be one token to score it; got {dict(zip(MOVES, move_ids))}")
    move_ids = [ids[0] for ids in move_ids]
    make_world = lambda facts: make_env(cfg.env.name, max_turns=cfg.env.max_turns, **(cfg.env.options | facts))  # noqa: E731
    rows = demonstrations(make_world, chat, cfg.env.initial_prompt, cfg.model.warmup, SEED)
    hits, labels = collections.defaultdict(list), collections.defaultdict(collections.Counter)
    for row in rows:
        if row.role not in ("attempt1", "attempt2"):
            continue
        tr = row.trajectory
        ids = torch.tensor([tr.token_ids()])
        with torch.no_grad():
            logits = model(ids).logits[0]
        prompt = "initial prompt" if row.role == "attempt1" else "facts stated"  # attempts 2 play under stated facts
        position, step, previous = 0, 0, ""
        for segment in tr.segments:
            if segment.logprobs is not None and step < len(tr.turns):  # an assistant reply: find its move token
                for offset, token in enumerate(segment.token_ids):
                    if token in move_ids:
                        key = (prompt, situation(step, previous))
                        predicted = move_ids[int(torch.argmax(logits[position + offset - 1, move_ids]))]
                        hits[key].append(predicted == token)
                        labels[key][token] += 1
                        break
                previous = tr.turns[step].observation
                step += 1
            position += len(segment.token_ids)
    print(f"{'prompt':<16} {'situation':<22} {'moves':>6} {'accuracy':>9} {'most common':>12}")
    for key in sorted(hits):
        n = len(hits[key])
        print(f"{key[0]:<16} {key[1]:<22} {n:>6} {sum(hits[key]) / n:>9.1%} {labels[key].most_common(1)[0][1] / n:>12.1%}")


if __name__ == "__main__":
    main(sys.argv[1:])
