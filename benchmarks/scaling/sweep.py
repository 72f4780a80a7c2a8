"""Scaling study: real trainer steps over model sizes x TP/PP/DP layouts, measured beside the planner's prediction.

    python benchmarks/scaling/sweep.py                                     # CPU: gloo, fp32, small Llama/Qwen3 shapes
    python benchmarks/scaling/sweep.py --sizes qwen3-0.6b,qwen3-1.7b,qwen3-4b --layouts 1x1x8,2x1x4,4x1x2,8x1x1,2x2x2 \
        --rows 64 --seq 2048 --mbs 1                                       # GPUs: NCCL, bf16, one 8-GPU node

Each run is one `torchrun --standalone` of `worker.py` (world = tp x pp x dp). Measured: tokens/s, each rank's
parameter / gradient / optimizer bytes counted from the tensors, the peak of the decoder's and the loss's saved
tensors in a step, and the memory the first step adds. Predicted by `erl_mega.plan`: the same state bytes, each
rank's activations (`layer_activation_bytes` x its in-flight layers), the fused loss kernel's workspace, and the
step time of `timing.train_seconds` on a "cluster" whose peak is the dense GEMM rate the ranks measured in the
same run, at MFU 1 (so measured / predicted tokens/s is the achieved share of GEMM peak; TP / DP communication
is not in the planner's time model). Writes `<out>/scaling.json` and `<out>/scaling.png`, prints a markdown table and
a last line of JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM

from erl_mega.plan.flops import train_flops
from erl_mega.plan.memory import DTYPE_BYTES, in_flight_layers, layer_activation_bytes, loss_workspace_bytes, state_bytes
from erl_mega.plan.params import total_params
from erl_mega.plan.shape import PRESETS_DIR, load_shape
from erl_mega.plan.spec import plan_config
from erl_mega.plan.timing import micro_batches_per_rank, train_seconds

WORKER = Path(__file__).with_name("worker.py")
# host-sized decoders shaped like the presets (GQA, SwiGLU; Qwen3's q/k norms); every count divides by 2
SIZES = {
    "llama-7m": dict(model_type="llama", hidden_size=256, num_hidden_layers=4, num_attention_heads=4,
                     num_key_value_heads=2, intermediate_size=704, vocab_size=8192),
    "qwen3-19m": dict(model_type="qwen3", hidden_size=384, num_hidden_layers=6, num_attention_heads=6,
                      num_key_value_heads=2, head_dim=64, intermediate_size=1024, vocab_size=16384,
                      tie_word_embeddings=True),
    "llama-52m": dict(model_type="llama", hidden_size=512, num_hidden_layers=8, num_attention_heads=8,
                      num_key_value_heads=4, intermediate_size=1408, vocab_size=32000),
}


def save_model(size: str, root: Path, dtype: torch.dtype) -> Path:
    """A random HF checkpoint of `size` (a host shape above, or a planner preset's published config)."""
    if size in SIZES:
        config = AutoConfig.for_model(**SIZES[size], max_position_embeddings=4096)
    else:
        config = AutoConfig.from_pretrained(PRESETS_DIR / f"{size}.json")
    AutoModelForCausalLM.from_config(config, dtype=dtype).save_pretrained(root / size)
    return root / size


def run_layout(hf: Path, tp: int, pp: int, dp: int, args: argparse.Namespace, out: Path) -> list[dict]:
    """One torchrun of the worker; each rank's measurements (its rank order)."""
    world = tp * pp * dp
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(world), str(WORKER),
           "--hf", str(hf), "--tp", str(tp), "--pp", str(pp), "--rows", str(args.rows), "--seq", str(args.seq),
           "--mbs", str(args.mbs), "--steps", str(args.steps), "--out", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, env=os.environ | {"OMP_NUM_THREADS": "1"})
    if done.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(world)]


def predict(hf: Path, tp: int, pp: int, dp: int, ranks: list[dict], args: argparse.Namespace, dtype: str) -> dict:
    """The planner on this run: state bytes per rank, step memory of the busiest rank, step time and tokens/s."""
    shape, world = load_shape(str(hf)), tp * pp * dp
    peak = sum(r["gemm_flops"] for r in ranks) / len(ranks)
    cfg = plan_config([f"model={hf}", "cluster.nodes=1", f"cluster.gpus_per_node={world}",
                       f"cluster.bf16_tflops={peak / 1e12}", "workload.algo=grpo", f"workload.tasks_per_step={args.rows}",
                       "workload.rollouts_per_task=1", "workload.prompt_tokens=0", f"workload.response_tokens={args.seq}",
                       f"train.micro_batch_size={args.mbs}", "train.mfu=1.0", "train.recompute=none",
                       f"train.params_dtype={dtype}"])
    per_layer = layer_activation_bytes(shape, args.seq, args.mbs, tp, "none", DTYPE_BYTES[dtype])
    micro_batches = micro_batches_per_rank(cfg, "grpo", dp)
    seconds = train_seconds(shape, cfg, "grpo", world, pp, 1, dp)
    return {"state": [sum(state_bytes(shape, tp, pp, dp, r["stage"], dtype).values()) for r in ranks],
            "activations": [int(per_layer * in_flight_layers(shape.layers, pp, 1, micro_batches, r["stage"])) for r in ranks],
            "loss_workspace": loss_workspace_bytes(shape, args.seq * args.mbs, tp, dtype), "step_s": seconds,
            "tokens_per_s": args.rows * args.seq / seconds, "params": total_params(shape),
            "compute_s": args.rows * train_flops(shape, args.seq, "none") / peak}


def plot(runs: list[dict], path: Path) -> None:
    """Measured against predicted: tokens/s, state bytes per rank, step memory (y = x is a perfect planner)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = (("tokens/s", lambda r: [(r["predicted"]["tokens_per_s"], r["tokens_per_s"])]),
              ("state MB per rank", lambda r: [(p / 1e6, m / 1e6) for p, m in zip(r["predicted"]["state"], r["state"])]),
              ("activations (decoder's saved tensors), peak MB per rank",
               lambda r: [(p / 1e6, m / 1e6) for p, m in zip(r["predicted"]["activations"], r["activations"])]))
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    for ax, (title, points) in zip(axes, panels):
        for size in dict.fromkeys(r["size"] for r in runs):
            xy = [p for r in runs if r["size"] == size for p in points(r)]
            ax.scatter([x for x, _ in xy], [y for _, y in xy], label=size)
            for r in (r for r in runs if r["size"] == size):
                x, y = points(r)[0]
                ax.annotate(r["layout"], (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
        lo, hi = ax.get_xlim()[0], max(ax.get_xlim()[1], ax.get_ylim()[1])
        ax.plot([lo, hi], [lo, hi], "k--", linewidth=0.8, label="measured = predicted")
        ax.set(title=title, xlabel="predicted", ylabel="measured", xscale="log", yscale="log")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default=",".join(SIZES))
    parser.add_argument("--layouts", default="1x1x1,2x1x1,1x2x1,1x1x2", help="tp x pp x dp, comma-separated")
    for name, default in (("rows", 8), ("seq", 128), ("mbs", 2), ("steps", 2)):
        parser.add_argument(f"--{name}", type=int, default=default)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/scaling/results"))
    args = parser.parse_args()
    cuda = torch.cuda.is_available()
    dtype = "bfloat16" if cuda else "float32"
    runs, models = [], tempfile.TemporaryDirectory()
    for size in args.sizes.split(","):
        hf = save_model(size, Path(models.name), getattr(torch, dtype))
        for layout in args.layouts.split(","):
            tp, pp, dp = (int(x) for x in layout.split("x"))
            load = os.getloadavg()[0]
            ranks = run_layout(hf, tp, pp, dp, args, args.out / "runs" / f"{size}_{layout}")
            step_s = max(r["step_s"] for r in ranks)
            runs.append({"size": size, "layout": f"tp{tp} pp{pp} dp{dp}", "load_avg": load, "step_s": step_s,
                         "tokens_per_s": args.rows * args.seq / step_s, "state": [sum(r[k] for k in (
                             "params", "grads", "main_weights", "optimizer")) for r in ranks],
                         "activations": [r["saved_peak"]["model"] for r in ranks],
                         "loss_saved": max(r["saved_peak"]["loss"] for r in ranks),
                         "step_memory": max(r["step_memory"] for r in ranks), "gemm_flops": [r["gemm_flops"] for r in ranks],
                         "cpu_s": sum(r["step_cpu_s"] for r in ranks),
                         "predicted": predict(hf, tp, pp, dp, ranks, args, dtype)})
            print(f"{size} {layout}: {runs[-1]['tokens_per_s']:.0f} tokens/s", file=sys.stderr)
    device = torch.cuda.get_device_name() if cuda else f"cpu ({os.cpu_count()} cores, 1 thread per rank)"
    result = {"date": time.strftime("%Y-%m-%d"), "device": device, "dtype": dtype, "command": " ".join(sys.argv),
              "rows": args.rows, "seq": args.seq, "mbs": args.mbs, "runs": runs}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "scaling.json").write_text(json.dumps(result, indent=1))
    plot(runs, args.out / "scaling.png")
    print("| model | params | layout | tokens/s | predicted | ratio | compute share | state MB/rank | predicted "
          "| activations MB/rank | predicted | loss saved MB | kernel's workspace | step RSS/alloc rise MB | load |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in runs:
        p = r["predicted"]
        print(f"| {r['size']} | {p['params'] / 1e6:.1f}M | {r['layout']} | {r['tokens_per_s']:.0f} | {p['tokens_per_s']:.0f} | "
              f"{r['tokens_per_s'] / p['tokens_per_s']:.2f} | {p['compute_s'] / r['cpu_s']:.2f} | {max(r['state']) / 1e6:.1f} | "
              f"{max(p['state']) / 1e6:.1f} | {max(r['activations']) / 1e6:.1f} | {max(p['activations']) / 1e6:.1f} | "
              f"{r['loss_saved'] / 1e6:.1f} | {p['loss_workspace'] / 1e6:.1f} | {r['step_memory'] / 1e6:.1f} | {r['load_avg']:.1f} |")
    print(json.dumps({k: v for k, v in result.items() if k != "runs"} | {"runs": len(runs)}))


if __name__ == "__main__":
    main()
