"""One megatron-core training step of a ~1B Qwen2-architecture model (random init), bf16, padded vs packed.

    torchrun --nproc-per-node 1 benchmarks/train/bench_train_step.py --rows 64 --max-len 2048

Prints tokens/s and MFU (model FLOPs / the bf16 GEMM peak measured in the same run) for padded and
packed micro-batches side by side, then one line of JSON. Needs CUDA; numbers go to
benchmarks/RESULTS.md with the date, the device and this command.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM

from erl_mega.kernels.losses import PolicyLossConfig
from erl_mega.train.batch import TrainBatch
from erl_mega.train.megatron_trainer import LossConfig, MegatronTrainer
from erl_mega.train.trainer import TrainerConfig

# ~0.9B parameters: Qwen2 layout (q/k/v biases, GQA), 16 layers of width 2048.
SHAPE = dict(hidden_size=2048, num_hidden_layers=16, num_attention_heads=16, num_key_value_heads=8,
             intermediate_size=5632, vocab_size=32000, max_position_embeddings=4096, tie_word_embeddings=False)


def gemm_peak_tflops(n: int = 8192, iters: int = 20) -> float:
    """Measured bf16 dense GEMM throughput of this device (the MFU denominator)."""
    a, b = (torch.randn(n, n, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(iters):
        a @ b
    torch.cuda.synchronize()
    return 2 * n**3 * iters / (time.perf_counter() - start) / 1e12


def model_flops(config, lengths: torch.Tensor) -> float:
    """Training FLOPs (forward + backward = 3x forward): 6 * params per token plus causal attention."""
    h, layers, v = config.hidden_size, config.num_hidden_layers, config.vocab_size
    kv = config.num_key_value_heads * h // config.num_attention_heads
    per_layer = 2 * h * h + 2 * h * kv + 3 * h * config.intermediate_size
    dense = 6 * (layers * per_layer + h * v) * float(lengths.sum())
    attention = 6 * layers * h * float((lengths.double() ** 2).sum())  # QK^T and AV, causal half, x3
    return dense + attention


def random_batch(rows: int, max_len: int, vocab: int, seed: int = 0) -> TrainBatch:
    """Rows of uniform random length in [max_len / 8, max_len], every token a policy token."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(max_len // 8, max_len + 1, (rows,), generator=g)
    on = (torch.arange(max_len)[None] < lengths[:, None]).float()
    ids = torch.randint(1, vocab, (rows, max_len + 1), generator=g)
    return TrainBatch(
        input_ids=ids[:, :-1], targets=ids[:, 1:], loss_mask=on, advantages=torch.randn(rows, 1).expand(rows, max_len) * on,
        rollout_logprobs=-on, distill_weight=torch.zeros(rows), is_distill=torch.zeros(rows, dtype=torch.bool),
        versions=(0,) * rows, temperatures=torch.ones(rows), lengths=lengths,
    )


def time_steps(trainer: MegatronTrainer, batch: TrainBatch, steps: int) -> float:
    trainer.step(batch)  # warm-up: allocations, autotuning
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        trainer.step(batch)
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--max-len", type=int, default=2048)
    parser.add_argument("--micro-batch-size", type=int, default=4)
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench_train_step needs CUDA")
    config = AutoConfig.for_model("qwen2", **SHAPE)
    batch = random_batch(args.rows, args.max_len, config.vocab_size)
    peak = gemm_peak_tflops()
    flops = model_flops(config, batch.lengths)
    loss = LossConfig(PolicyLossConfig(kl_coef=0.0))
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16).save_pretrained(Path(tmp))
        for name, extra in {"padded": {}, "packed": {"packing": True, "max_tokens_per_micro_batch": args.micro_batch_size * args.max_len}}.items():
            cfg = TrainerConfig(micro_batch_size=args.micro_batch_size, **extra)
            trainer = MegatronTrainer(tmp, cfg, loss, params_dtype=torch.bfloat16)
            seconds = time_steps(trainer, batch, args.steps)
            results[name] = {"step_s": seconds, "tokens_per_s": float(batch.lengths.sum()) / seconds,
                             "mfu": flops / seconds / 1e12 / peak, "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30}
            del trainer
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
    print(f"{torch.cuda.get_device_name()}  bf16 GEMM peak {peak:.0f} TFLOP/s  tokens/step {int(batch.lengths.sum())}")
    print(f"{'layout':<8}{'step s':>10}{'tokens/s':>12}{'MFU':>8}{'mem GiB':>9}")
    for name, r in results.items():
        print(f"{name:<8}{r['step_s']:>10.3f}{r['tokens_per_s']:>12.0f}{r['mfu']:>8.1%}{r['peak_mem_gib']:>9.1f}")
    print(f"packed / padded tokens/s: {results['packed']['tokens_per_s'] / results['padded']['tokens_per_s']:.2f}x")
    print(json.dumps({"device": torch.cuda.get_device_name(), "peak_tflops": peak} | results))


if __name__ == "__main__":
    main()
