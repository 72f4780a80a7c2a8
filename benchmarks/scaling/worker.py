"""One rank of one scaling-study run: real MegatronTrainer steps on fixed-length rows; what it measured, as JSON.

    torchrun --standalone --nproc-per-node 2 benchmarks/scaling/worker.py --hf /tmp/hf --tp 2 --out /tmp/run

Started by `sweep.py` (one torchrun per model size x layout). Each rank writes `<out>/rank<R>.json`: its
parameter, gradient-buffer and Adam-state bytes counted from the tensors, the peak of what autograd
holds for backward in a step (saved-tensor hooks), the memory the step adds (CUDA: peak allocated;
host: peak RSS rise, /proc), step seconds (wall and this process's CPU time), and its device's dense
GEMM rate (the planner's FLOP/s for this "cluster").
"""

from __future__ import annotations

import argparse
import gc
import json
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch
from megatron.core import parallel_state

from erl_mega.kernels.losses import PolicyLossConfig
from erl_mega.train.batch import TrainBatch
from erl_mega.train import megatron_trainer
from erl_mega.train.megatron_trainer import LossConfig, MegatronTrainer
from erl_mega.train.trainer import TrainerConfig


def fixed_batch(rows: int, seq: int, vocab: int) -> TrainBatch:
    """Rows of exactly `seq` tokens, every target in the loss: the planner's shapes, no padding."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, vocab, (rows, seq + 1), generator=g)
    mask = torch.ones(rows, seq)
    return TrainBatch(
        input_ids=ids[:, :-1], targets=ids[:, 1:], loss_mask=mask,
        advantages=torch.randn(rows, 1, generator=g).expand(rows, seq).contiguous(), rollout_logprobs=-mask,
        behaviour_known=torch.ones(rows, dtype=torch.bool), distill_weight=torch.zeros(rows),
        is_distill=torch.zeros(rows, dtype=torch.bool), versions=(0,) * rows,
        temperatures=torch.ones(rows), lengths=torch.full((rows,), seq),
    )


def gemm_flops(device: torch.device, dtype: torch.dtype, n: int, iters: int = 20) -> float:
    """Dense n x n GEMM FLOP/s of this rank's device; on the host per second of this process's CPU time
    (the core's own rate, whatever else the shared machine runs)."""
    clock = time.perf_counter if device.type == "cuda" else time.process_time
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    a @ b
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = clock()
    for _ in range(iters):
        a @ b
    if device.type == "cuda":
        torch.cuda.synchronize()
    return 2 * n**3 * iters / (clock() - start)


def _proc_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


class SavedPeak:
    """Peak bytes of distinct non-parameter storages autograd holds for backward, split into the decoder's
    (what the planner calls activations) and the loss's (saved while `micro_batch_loss` runs)."""

    def __init__(self, params: set[int]) -> None:
        self.params, self.kind, self.holders = params, "model", {}
        self.live, self.peak = {"model": 0, "loss": 0}, {"model": 0, "loss": 0}

    def pack(self, t: torch.Tensor) -> object:
        return _Held(self, t)

    @contextmanager
    def loss_attributed(self) -> Iterator[None]:
        """Within: what the trainer's loss saves counts as the loss's."""
        original = megatron_trainer.micro_batch_loss

        def attributed(*args, **kwargs):
            self.kind = "loss"
            try:
                return original(*args, **kwargs)
            finally:
                self.kind = "model"

        megatron_trainer.micro_batch_loss = attributed
        try:
            yield
        finally:
            megatron_trainer.micro_batch_loss = original


class _Held:
    """One saved tensor; its storage counts (for the kind that saved it first) while any saved tensor holds it."""

    def __init__(self, peak: SavedPeak, t: torch.Tensor) -> None:
        self.peak, self.t, self.ptr = peak, t, t.untyped_storage().data_ptr()
        if self.ptr in peak.params:
            return
        kind, count = peak.holders.get(self.ptr, (peak.kind, 0))
        if count == 0:
            peak.live[kind] += t.untyped_storage().nbytes()
            peak.peak[kind] = max(peak.peak[kind], peak.live[kind])
        peak.holders[self.ptr] = (kind, count + 1)

    def __del__(self) -> None:
        if self.ptr in self.peak.params:
            return
        kind, count = self.peak.holders.pop(self.ptr)
        if count > 1:
            self.peak.holders[self.ptr] = (kind, count - 1)
        else:
            self.peak.live[kind] -= self.t.untyped_storage().nbytes()


def _step_memory(trainer: MegatronTrainer, batch: TrainBatch, device: torch.device) -> tuple[int, dict[str, int]]:
    """(bytes the first step adds on top of the trainer's state, peak bytes saved for backward by the decoder and the loss)."""
    gc.collect()
    saved = SavedPeak({p.untyped_storage().data_ptr() for p in trainer.model.parameters()})
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        before = _proc_kb("VmRSS") * 1024
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM (peak RSS) to the current RSS
    with saved.loss_attributed(), torch.autograd.graph.saved_tensors_hooks(saved.pack, lambda held: held.t):
        trainer.step(batch)
    after = torch.cuda.max_memory_allocated() if device.type == "cuda" else _proc_kb("VmHWM") * 1024
    return after - before, saved.peak


def _bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name, default in (("tp", 1), ("pp", 1), ("rows", 8), ("seq", 128), ("mbs", 2), ("steps", 2)):
        parser.add_argument(f"--{name}", type=int, default=default)
    parser.add_argument("--hf", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")
    dtype = torch.bfloat16 if cuda else torch.float32  # the host has no fast bf16 GEMM
    trainer = MegatronTrainer(args.hf, TrainerConfig(lr=1e-4, micro_batch_size=args.mbs, tp=args.tp, pp=args.pp),
                              LossConfig(PolicyLossConfig(kl_coef=0.0)), params_dtype=dtype)
    flops = gemm_flops(device, dtype, 4096 if cuda else 512)
    batch = fixed_batch(args.rows, args.seq, trainer.hf_config.vocab_size)
    state = [v for s in trainer.optimizer.optimizer.state.values() for k, v in s.items() if k in ("exp_avg", "exp_avg_sq")]
    main_params = [p for g in getattr(trainer.optimizer, "shard_fp32_from_float16_groups", []) for p in g]
    result = {
        "stage": parallel_state.get_pipeline_model_parallel_rank(),
        "params": _bytes(trainer.model.parameters()),
        "grads": _bytes(b.grad_data for ddp in trainer.ddp for b in ddp.buffers),
        "main_weights": _bytes(main_params),
        "optimizer": _bytes(state),
        "gemm_flops": flops,
    }
    # the first step (warm-up) sizes memory
    result["step_memory"], result["saved_peak"] = _step_memory(trainer, batch, device)
    if cuda:
        torch.cuda.synchronize()
    start, cpu = time.perf_counter(), time.process_time()
    for _ in range(args.steps):
        trainer.step(batch)
    if cuda:
        torch.cuda.synchronize()
    result["step_s"] = (time.perf_counter() - start) / args.steps
    result["step_cpu_s"] = (time.process_time() - cpu) / args.steps  # this rank's compute, not its waits
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"rank{torch.distributed.get_rank()}.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main()
