"""Trainer tokens/s of one megatron-core step, padded vs packed micro-batches, on CUDA (bf16) or the host (fp32).

    torchrun --nproc-per-node 1 benchmarks/train/bench_train_step.py --rows 64 --max-len 2048
    python benchmarks/train/bench_train_step.py --size small --rows 16 --max-len 256 --steps 2   # CPU

Rows look like agent trajectories: the first `--prompt-fraction` of each row (prompt, environment
turns) carries no loss, and every `--distill-every`-th row is a distillation row. Prints tokens/s and
MFU (model FLOPs / the dense GEMM peak measured in the same run) per layout side by side, then one
line of JSON. Only the benchmark's own API is used, so it also measures an older checkout put first
on PYTHONPATH (before/after figures). Numbers go to benchmarks/RESULTS.md with date, device, command.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM

from erl_mega.kernels.losses import PolicyLossConfig
from erl_mega.train.batch import TrainBatch
from erl_mega.train.megatron_trainer import LossConfig, MegatronTrainer
from erl_mega.train.trainer import TrainerConfig

COMMON = dict(model_type="qwen2", tie_word_embeddings=False)
SIZES = {
    # ~0.9B parameters: Qwen2 layout (q/k/v biases, GQA), 16 layers of width 2048.
    "1b": dict(hidden_size=2048, num_hidden_layers=16, num_attention_heads=16, num_key_value_heads=8,
               intermediate_size=5632, vocab_size=32000, max_position_embeddings=4096),
    # a host-sized model whose lm-head (V = 32000) weighs as much as in small real policies
    "small": dict(hidden_size=256, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                  intermediate_size=704, vocab_size=32000, max_position_embeddings=4096),
}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def gemm_peak_tflops(device: torch.device, dtype: torch.dtype, n: int, iters: int = 10) -> float:
    """Measured dense GEMM throughput of this device in the training dtype (the MFU denominator)."""
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    for _ in range(2):
        a @ b
    sync(device)
    start = time.perf_counter()
    for _ in range(iters):
        a @ b
    sync(device)
    return 2 * n**3 * iters / (time.perf_counter() - start) / 1e12


def model_flops(config, lengths: torch.Tensor) -> float:
    """Training FLOPs of every token (forward + backward = 3x forward): 6 * params per token plus causal attention."""
    h, layers, v = config.hidden_size, config.num_hidden_layers, config.vocab_size
    kv = config.num_key_value_heads * h // config.num_attention_heads
    per_layer = 2 * h * h + 2 * h * kv + 3 * h * config.intermediate_size
    dense = 6 * (layers * per_layer + h * v) * float(lengths.sum())
    attention = 6 * layers * h * float((lengths.double() ** 2).sum())  # QK^T and AV, causal half, x3
    return dense + attention


def random_batch(rows: int, max_len: int, vocab: int, prompt_fraction: float, distill_every: int, seed: int = 0) -> TrainBatch:
    """Rows of uniform random length in [max_len / 8, max_len]; loss on the tail after each row's prompt."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(max_len // 8, max_len + 1, (rows,), generator=g)
    positions = torch.arange(max_len)[None]
    on = (positions < lengths[:, None]).float()
    mask = on * (positions >= (lengths[:, None] * prompt_fraction).long())
    ids = torch.randint(1, vocab, (rows, max_len + 1), generator=g)
    is_distill = torch.arange(rows) % distill_every == distill_every - 1 if distill_every else torch.zeros(rows, dtype=torch.bool)
    return TrainBatch(
        input_ids=ids[:, :-1], targets=ids[:, 1:], loss_mask=mask,
        advantages=torch.randn(rows, 1, generator=g).expand(rows, max_len) * mask,
        rollout_logprobs=-mask, behaviour_known=~is_distill, distill_weight=is_distill.float(), is_distill=is_distill,
        versions=(0,) * rows, temperatures=torch.ones(rows), lengths=lengths,
    )


def time_steps(trainer: MegatronTrainer, batch: TrainBatch, steps: int, device: torch.device) -> float:
    trainer.step(batch)  # warm-up: allocations, autotuning
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        trainer.step(batch)
    sync(device)
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="1b")
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--max-len", type=int, default=2048)
    parser.add_argument("--micro-batch-size", type=int, default=4)
    parser.add_argument("--prompt-fraction", type=float, default=0.5)
    parser.add_argument("--distill-every", type=int, default=4, help="every k-th row distills (0: none)")
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32  # the host has no fast bf16 GEMM
    config = AutoConfig.for_model(**COMMON, **SIZES[args.size])
    batch = random_batch(args.rows, args.max_len, config.vocab_size, args.prompt_fraction, args.distill_every)
    peak = gemm_peak_tflops(device, dtype, 8192 if device.type == "cuda" else 1024)
    flops = model_flops(config, batch.lengths)
    loss = LossConfig(PolicyLossConfig(kl_coef=0.0))
    layouts = {"padded": {}, "packed": {"packing": True, "max_tokens_per_micro_batch": args.micro_batch_size * args.max_len}}
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        AutoModelForCausalLM.from_config(config, dtype=dtype).save_pretrained(Path(tmp))
        for name, extra in layouts.items():
            trainer = MegatronTrainer(tmp, TrainerConfig(micro_batch_size=args.micro_batch_size, **extra), loss, params_dtype=dtype)
            seconds = time_steps(trainer, batch, args.steps, device)
            memory = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
            results[name] = {"step_s": seconds, "tokens_per_s": float(batch.lengths.sum()) / seconds,
                             "mfu": flops / seconds / 1e12 / peak, "peak_mem_gib": memory}
            del trainer
            if device.type == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    loss_tokens = int(batch.loss_mask.sum())
    print(f"{name}  {dtype}  GEMM peak {peak:.2f} TFLOP/s  tokens/step {int(batch.lengths.sum())} (loss tokens {loss_tokens})")
    print(f"{'layout':<8}{'step s':>10}{'tokens/s':>12}{'MFU':>8}{'mem GiB':>9}")
    for layout, r in results.items():
        print(f"{layout:<8}{r['step_s']:>10.3f}{r['tokens_per_s']:>12.0f}{r['mfu']:>8.1%}{r['peak_mem_gib']:>9.1f}")
    print(f"packed / padded tokens/s: {results['packed']['tokens_per_s'] / results['padded']['tokens_per_s']:.2f}x")
    code = os.environ.get("PYTHONPATH", "").split(os.pathsep)[0] or "installed"
    print(json.dumps({"device": name, "dtype": str(dtype), "code": code, "peak_tflops": peak, "loss_tokens": loss_tokens} | results))


if __name__ == "__main__":
    main()
