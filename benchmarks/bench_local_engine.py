"""python benchmarks/bench_local_engine.py [--batch 32 --prompt 200 --new 16 --repeats 5]

The embedded rollout engine (`erl_mega.rollout.local.LocalEngine`) side by side with transformers'
`generate` on the same random ~2.8M-parameter Qwen2 (hidden 256, 3 layers, vocab 4096, tied), one
batch of equal-length prompts: greedy, and sampling at T=1 (the engine also returns per-token
log-probs, which `generate` does not). Best of `--repeats` wall-clock runs; prints a table and a
last line of JSON.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from erl_mega.rollout.engine import GenerationRequest, SamplingParams
from erl_mega.rollout.local import LocalEngine


def best_of(repeats: int, fn) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--prompt", type=int, default=200)
    parser.add_argument("--new", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=4096, hidden_size=256, intermediate_size=768, num_hidden_layers=3,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True, max_position_embeddings=1024)
    model = Qwen2ForCausalLM(config).eval()
    engine = LocalEngine(model, pad_token_id=0, max_batch_size=args.batch)
    prompts = torch.randint(1, 4096, (args.batch, args.prompt))
    never = (4095,)  # no early stop: every row generates exactly --new tokens

    def engine_run(temperature: float):
        params = SamplingParams(args.new, temperature, 1.0, never)
        reqs = [GenerationRequest(tuple(p.tolist()), params, seed=i) for i, p in enumerate(prompts)]
        return lambda: engine.generate(reqs)

    def hf_run(sample: bool):
        kwargs = dict(do_sample=sample, temperature=1.0, top_p=1.0, top_k=0) if sample else dict(do_sample=False)
        mask = torch.ones_like(prompts)
        return lambda: model.generate(prompts, attention_mask=mask, max_new_tokens=args.new, min_new_tokens=args.new,
                                      pad_token_id=0, **kwargs)

    rows = []
    for mode, ours, theirs in (("greedy", engine_run(0.0), hf_run(False)), ("T=1", engine_run(1.0), hf_run(True))):
        with torch.inference_mode():
            t_ours, t_hf = best_of(args.repeats, ours), best_of(args.repeats, theirs)
        tokens = args.batch * args.new
        rows.append({"mode": mode, "engine_s": t_ours, "hf_generate_s": t_hf, "engine_tok_s": tokens / t_ours,
                     "hf_tok_s": tokens / t_hf, "engine_over_hf": t_ours / t_hf})
    print(f"{args.batch} prompts x {args.prompt} tokens, {args.new} new tokens, {torch.get_num_threads()} threads")
    print(f"{'mode':8} {'engine s':>9} {'HF s':>8} {'engine tok/s':>13} {'HF tok/s':>9} {'engine/HF time':>15}")
    for r in rows:
        print(f"{r['mode']:8} {r['engine_s']:9.3f} {r['hf_generate_s']:8.3f} {r['engine_tok_s']:13.0f} "
              f"{r['hf_tok_s']:9.0f} {r['engine_over_hf']:15.2f}")
    print(json.dumps({"batch": args.batch, "prompt": args.prompt, "new": args.new, "rows": rows}))


if __name__ == "__main__":
    main()
