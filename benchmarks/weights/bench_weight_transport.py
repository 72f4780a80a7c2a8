"""python benchmarks/weights/bench_weight_transport.py [--mode shm|cuda-ipc] [--shape 1b|7b] [--layers N] [--bucket-mb 512] [--repeats 3]

Weight sync between two processes through `erl_mega.weights.transport.TensorTransport`, the path of
`/update_weights_from_tensor`: the trainer's HF-named stream is regrouped into flattened per-dtype
buckets (shared memory on CPU, CUDA memory on GPU), each sent as a `flattened_bucket` handle; the
receiving process rebuilds the bucket from the handle and copies it into its own weights, then acks,
as the server's loader does. The "model" is random bf16 tensors with Llama-3.2-1B's names and shapes
(`--shape 1b`, 1.24 B parameters) or Llama-2-7B's (`--shape 7b`, 6.74 B); `--layers` keeps only the first N decoder layers where memory is short (the
sender and receiver each hold a full copy). `--mode shm` runs on CPU;
`--mode cuda-ipc` needs a GPU (sender and receiver on the same device). Only the HTTP hop is left out
(the body goes over a pipe). Prints per-phase seconds and GB/s (best of `--repeats`), the ratios to
a plain in-process copy of the same bytes, and a last line of JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch
import torch.multiprocessing as mp

from erl_mega.weights.flat import deserialize, rebucket
from erl_mega.weights.transport import TensorTransport

SHAPES = {  # (vocab, hidden, intermediate, layers, kv_dim, tied)
    "1b": (128256, 2048, 8192, 16, 512, True),
    "7b": (32000, 4096, 11008, 32, 4096, False),
}


def llama_shapes(shape: str, layers: int | None = None) -> list[tuple[str, tuple[int, ...]]]:
    """HF parameter names and shapes of a Llama-architecture checkpoint (its first `layers` decoder layers)."""
    vocab, hidden, inter, all_layers, kv, tied = SHAPES[shape]
    layers = all_layers if layers is None else min(layers, all_layers)
    names = [("model.embed_tokens.weight", (vocab, hidden))]
    for i in range(layers):
        p = f"model.layers.{i}"
        names += [(f"{p}.self_attn.q_proj.weight", (hidden, hidden)), (f"{p}.self_attn.k_proj.weight", (kv, hidden)),
                  (f"{p}.self_attn.v_proj.weight", (kv, hidden)), (f"{p}.self_attn.o_proj.weight", (hidden, hidden)),
                  (f"{p}.mlp.gate_proj.weight", (inter, hidden)), (f"{p}.mlp.up_proj.weight", (inter, hidden)),
                  (f"{p}.mlp.down_proj.weight", (hidden, inter)), (f"{p}.input_layernorm.weight", (hidden,)),
                  (f"{p}.post_attention_layernorm.weight", (hidden,))]
    names.append(("model.norm.weight", (hidden,)))
    if not tied:
        names.append(("lm_head.weight", (vocab, hidden)))
    return names


def receiver(conn, shapes, device: str) -> None:
    """The server side: own weights; per payload rebuild from the handle, copy in, ack with timings."""
    weights = {n: torch.empty(s, dtype=torch.bfloat16, device=device) for n, s in shapes}
    conn.send("ready")
    while (body := conn.recv()) is not None:
        start = time.perf_counter()
        bucket = deserialize(body["serialized_named_tensors"][0])
        rebuilt = time.perf_counter()
        for name, tensor in bucket.named_tensors():
            weights[name].copy_(tensor)
        if device == "cuda":
            torch.cuda.synchronize()
        conn.send((rebuilt - start, time.perf_counter() - rebuilt))
        del bucket


class PipeEndpoint:
    """A transport Endpoint whose POST goes over a pipe to the receiver process and returns on its ack."""

    url = "pipe://receiver"

    def __init__(self, conn) -> None:
        self.conn, self.rebuild_s, self.load_s = conn, 0.0, 0.0

    def post(self, path: str, body: dict | None = None, timeout: float | None = None) -> dict:
        self.conn.send(body)
        rebuild, load = self.conn.recv()
        self.rebuild_s += rebuild
        self.load_s += load
        return {"success": True}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mode", choices=("shm", "cuda-ipc"), default="shm")
    parser.add_argument("--shape", choices=tuple(SHAPES), default=None, help="default: 1b for shm, 7b for cuda-ipc")
    parser.add_argument("--layers", type=int, default=None, help="default: all of the shape's layers")
    parser.add_argument("--bucket-mb", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    shape = args.shape or ("1b" if args.mode == "shm" else "7b")
    device = "cuda" if args.mode == "cuda-ipc" else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--mode cuda-ipc needs a GPU; this machine has none (use --mode shm)")
    shapes = llama_shapes(shape, args.layers)
    g = torch.Generator(device=device).manual_seed(0)
    stream = [[(n, torch.randn(s, generator=g, device=device, dtype=torch.float32).bfloat16())] for n, s in shapes]
    total = sum(t.numel() * t.element_size() for b in stream for _, t in b)
    transport = TensorTransport(bucket_bytes=args.bucket_mb << 20)
    ctx = mp.get_context("spawn")
    ours, theirs = ctx.Pipe()
    child = ctx.Process(target=receiver, args=(theirs, shapes, device), daemon=True)
    child.start()
    assert ours.recv() == "ready"
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    best = None
    for _ in range(args.repeats):
        sync()
        start = time.perf_counter()
        for bucket in rebucket(stream, transport.bucket_bytes):  # the build as it was: flatten, then copy to shm
            if device == "cpu":
                bucket.flattened_tensor.share_memory_()
        sync()
        build_then_share = time.perf_counter() - start
        start = time.perf_counter()
        for bucket in rebucket(stream, transport.bucket_bytes, shared=True):  # the build the transport does
            pass
        sync()
        build = time.perf_counter() - start
        endpoint = PipeEndpoint(ours)
        start = time.perf_counter()
        transport.push(stream, 1, [endpoint])
        push = time.perf_counter() - start
        row = {"build_then_share_s": build_then_share, "build_s": build, "push_total_s": push, "rebuild_s": endpoint.rebuild_s, "load_s": endpoint.load_s}
        best = row if best is None or push < best["push_total_s"] else best
    ours.send(None)
    child.join(60)
    sync()
    start = time.perf_counter()
    for bucket in stream:
        for _, tensor in bucket:
            tensor.clone()
    sync()
    copy_s = time.perf_counter() - start  # one in-process copy of every byte, tensor by tensor: the floor
    gbps = total / best["push_total_s"] / 1e9
    layers = sum(n.endswith("q_proj.weight") for n, _ in shapes)
    print(f"{args.mode} · {shape}-shaped, {layers} layers ({total / 1e9:.2f} GB bf16, {len(shapes)} tensors) · buckets of "
          f"{args.bucket_mb} MiB · load average {os.getloadavg()[0]:.1f}")
    print(f"{'phase':28s} {'seconds':>8s} {'GB/s':>7s} {'x copy':>7s}")
    for name, key in (("build: flatten, then share", "build_then_share_s"), ("build: flatten into shm", "build_s"), ("push total (build+send+ack)", "push_total_s"),
                      ("  receiver rebuild", "rebuild_s"), ("  receiver load (copy_)", "load_s")):
        seconds = best[key]
        print(f"{name:28s} {seconds:8.3f} {total / max(seconds, 1e-9) / 1e9:7.2f} {seconds / copy_s:7.2f}")
    print(f"{'in-process copy (floor)':28s} {copy_s:8.3f} {total / copy_s / 1e9:7.2f} {1.0:7.2f}")
    print(json.dumps({"mode": args.mode, "shape": shape, "layers": layers, "bytes": total, "bucket_mb": args.bucket_mb, **best,
                      "copy_s": copy_s, "gb_per_s": gbps, "load_average": os.getloadavg()[0]}))


if __name__ == "__main__":
    main()
