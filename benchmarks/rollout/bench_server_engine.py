"""python benchmarks/rollout/bench_server_engine.py [--episodes 16 --turns 4 --prompt 96 --obs 24 --max-batch 16 --rounds 2
    --hidden 256 --layers 4]

The embedded rollout server (`erl-mega serve`, its own process on loopback) under a multi-turn workload:
every episode is a client thread that sends turn k+1 (its history + completion + an observation) as
soon as turn k returns, with per-episode completion lengths from 4 to 64 tokens. Three servers, one
after the other, on the same random Qwen2 (by default hidden 256, 4 layers, vocab 4096): continuous batching with
the prefix cache, continuous without it, and request-level batching with it. Prints wall time,
episodes/s, completion tokens/s, prompt tokens prefilled and the server process's CPU seconds, the
ratios side by side, whether all three produced the same tokens, and a last line of JSON. The three run
in turn `--rounds` times (A B C A B C ...) and each keeps its best wall time, so a load change on a
shared machine does not fall on one of them alone.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time

import psutil
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from erl_mega.rollout.client import ServerClient
from erl_mega.rollout.engine import GenerationRequest, SamplingParams
from erl_mega.rollout.server.process import ServerProcess

VOCAB = 4096
NEVER = (VOCAB - 1,)  # a stop id no prompt uses: completions run to max_new_tokens, so runs are comparable


def _episode(client: ServerClient, index: int, args, out: dict) -> None:
    g = torch.Generator().manual_seed(index)
    history = tuple(torch.randint(1, VOCAB - 1, (args.prompt,), generator=g).tolist())
    tokens = []
    for turn in range(args.turns):
        new = 4 + 60 * ((index + turn) % 4 == 0) + 4 * ((index + turn) % 3)  # mostly short, some long turns
        params = SamplingParams(max_new_tokens=new, temperature=0.0, stop_token_ids=NEVER)
        completion = client.generate_one(GenerationRequest(history, params, seed=index))
        tokens.append(completion.token_ids)
        obs = tuple(torch.randint(1, VOCAB - 1, (args.obs,), generator=g).tolist())
        history = history + completion.token_ids + obs
    out[index] = tokens


def run(ckpt: str, label: str, options: dict, args) -> dict:
    proc = ServerProcess.embedded(ckpt, max_batch_size=args.max_batch, **options)
    proc.startup_timeout = 900  # a loaded 2-core machine can take minutes to import torch + transformers
    proc.start()
    try:
        warm = ServerClient(proc.url)
        warm.generate_one(GenerationRequest((1, 2, 3), SamplingParams(max_new_tokens=2, temperature=0.0)))
        warm.post("/flush_cache")
        before = warm.get("/get_server_info")
        cpu0 = psutil.Process(proc.pid).cpu_times()
        outs: dict = {}
        threads = [threading.Thread(target=_episode, args=(ServerClient(proc.url), i, args, outs)) for i in range(args.episodes)]
        start = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - start
        cpu1 = psutil.Process(proc.pid).cpu_times()
        info = warm.get("/get_server_info")
    finally:
        proc.stop()
    delta = {k: info[k] - before[k] for k in ("prompt_tokens", "completion_tokens", "cached_tokens", "decode_steps")}
    return {"label": label, "wall_s": wall, "server_cpu_s": (cpu1.user + cpu1.system) - (cpu0.user + cpu0.system),
            "episodes_per_s": args.episodes / wall, "tokens_per_s": delta["completion_tokens"] / wall,
            "prefilled_tokens": delta["prompt_tokens"] - delta["cached_tokens"], **delta, "outputs": outs}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--episodes", type=int, default=16)
    parser.add_argument("--turns", type=int, default=4)
    parser.add_argument("--prompt", type=int, default=96)
    parser.add_argument("--obs", type=int, default=24)
    parser.add_argument("--max-batch", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    args = parser.parse_args()
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=VOCAB, hidden_size=args.hidden, intermediate_size=3 * args.hidden,
                         num_hidden_layers=args.layers, num_attention_heads=args.hidden // 64, num_key_value_heads=2,
                         tie_word_embeddings=True,
                         max_position_embeddings=2048, initializer_range=0.2)
    ckpt = tempfile.mkdtemp(prefix="bench_server_engine_")
    Qwen2ForCausalLM(config).save_pretrained(ckpt)
    load = os.getloadavg()[0]
    configs = [("continuous + prefix cache", {}), ("continuous, no cache", {"prefix_cache_mb": 0}),
               ("request-level + prefix cache", {"batching": "request"})]
    best: dict[str, dict] = {}
    for _ in range(args.rounds):
        for label, options in configs:
            row = run(ckpt, label, options, args)
            best[label] = row if label not in best or row["wall_s"] < best[label]["wall_s"] else best[label]
    rows = [best[label] for label, _ in configs]
    base = rows[0]
    same = all(r["outputs"] == base["outputs"] for r in rows)
    print(f"Qwen2 hidden {args.hidden} x {args.layers} layers; {args.episodes} episodes x {args.turns} turns, prompt "
          f"{args.prompt}, obs {args.obs}, max batch {args.max_batch};"
          f" load average {load:.1f} -> {os.getloadavg()[0]:.1f}")
    print(f"{'server':30s} {'wall s':>7s} {'cpu s':>7s} {'ep/s':>6s} {'tok/s':>7s} {'prefilled':>9s} {'cached':>7s} "
          f"{'steps':>6s} {'wall x':>7s} {'cpu x':>6s}")
    for r in rows:
        print(f"{r['label']:30s} {r['wall_s']:7.2f} {r['server_cpu_s']:7.2f} {r['episodes_per_s']:6.2f} "
              f"{r['tokens_per_s']:7.1f} {r['prefilled_tokens']:9d} {r['cached_tokens']:7d} {r['decode_steps']:6d} "
              f"{r['wall_s'] / base['wall_s']:7.2f} {r['server_cpu_s'] / base['server_cpu_s']:6.2f}")
    print(f"same tokens in all three: {same}")
    print(json.dumps({"args": vars(args), "load_average": load, "same_tokens": same,
                      "rows": [{k: v for k, v in r.items() if k != "outputs"} for r in rows]}))


if __name__ == "__main__":
    main()
