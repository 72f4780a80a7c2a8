"""Step time: rollout (prefill compute-bound, decode memory-bound), training at an MFU with the pipeline bubble, weight sync."""

from __future__ import annotations

import math
from dataclasses import dataclass

from erl_mega.plan.flops import forward_flops, train_flops
from erl_mega.plan.memory import kv_bytes_per_token
from erl_mega.plan.shape import ModelShape
from erl_mega.plan.spec import PlanConfig


@dataclass(frozen=True)
class Phase:
    """One generation round: `seqs` sequences, each `prompt` tokens prefilled then `gen` tokens decoded."""

    seqs: int
    prompt: int
    gen: int


def rollout_phases(cfg: PlanConfig, algo: str) -> list[Phase]:
    """GRPO: one attempt. ERL: attempt 1, then for a share of episodes a reflection and attempt 2."""
    w = cfg.workload
    episodes = w.tasks_per_step * w.rollouts_per_task
    phases = [Phase(episodes, w.prompt_tokens, w.response_tokens)]
    if algo == "erl":
        again = round(episodes * w.second_attempt_share)
        phases += [Phase(again, w.prompt_tokens + w.response_tokens, w.reflection_tokens),
                   Phase(again, w.prompt_tokens + w.reflection_tokens, w.response_tokens)]
    return phases


def train_rows(cfg: PlanConfig, algo: str) -> list[tuple[int, int]]:
    """(rows, tokens per row) trained: every attempt, and under ERL every second attempt."""
    return [(p.seqs, p.prompt + p.gen) for p in rollout_phases(cfg, algo) if p.gen == cfg.workload.response_tokens]


def rollout_seconds(m: ModelShape, n_params: int, cfg: PlanConfig, algo: str, engines: int, seqs_fit: int) -> float:
    """Prefill at the MFU on the engine's GPUs; decode steps reading weights + live KV from HBM."""
    c, rt, t = cfg.cluster, cfg.placement.rollout_tp, cfg.train
    weights_per_gpu = 2 * n_params / rt
    seconds = 0.0
    for p in rollout_phases(cfg, algo):
        per_engine = math.ceil(p.seqs / engines)
        batch = max(1, min(per_engine, seqs_fit))
        waves = math.ceil(per_engine / batch)
        prefill = per_engine * forward_flops(m, p.prompt) / (rt * c.bf16_tflops * 1e12 * t.mfu)
        kv_read = batch * (p.prompt + p.gen / 2) * kv_bytes_per_token(m, rt)
        decode = waves * p.gen * (weights_per_gpu + kv_read) / (c.hbm_gbps * 1e9 * t.decode_efficiency)
        seconds += prefill + decode
    return seconds


def micro_batches_per_rank(cfg: PlanConfig, algo: str, dp: int) -> int:
    rows = sum(r for r, _ in train_rows(cfg, algo))
    return max(1, math.ceil(rows / dp / cfg.train.micro_batch_size))


def train_seconds(m: ModelShape, cfg: PlanConfig, algo: str, gpus: int, pp: int, vpp: int, dp: int) -> float:
    """Training FLOPs over all trainer GPUs at the MFU, stretched by the bubble (p - 1) / (m * v)."""
    c, t = cfg.cluster, cfg.train
    flops = sum(rows * train_flops(m, seq, t.recompute) for rows, seq in train_rows(cfg, algo))
    bubble = (pp - 1) / (micro_batches_per_rank(cfg, algo, dp) * vpp)
    return flops / (gpus * c.bf16_tflops * 1e12 * t.mfu) * (1 + bubble)


def sync_seconds(n_params: int, cfg: PlanConfig, pp: int) -> tuple[float, float]:
    """(seconds, bytes per link): colocated each GPU takes its rollout-TP shard over NVLink; disaggregated each
    PP stage broadcasts its bf16 share over the inter-node link."""
    c, p = cfg.cluster, cfg.placement
    if p.mode == "colocated":
        per_link, bandwidth = 2 * n_params / p.rollout_tp, c.nvlink_gbps
    else:
        per_link, bandwidth = 2 * n_params / pp, c.internode_gbps
    return per_link / (bandwidth * 1e9 * cfg.train.sync_efficiency), per_link
