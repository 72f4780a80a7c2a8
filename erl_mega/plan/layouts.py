"""Every TP x PP x VPP layout of the cluster, checked, sized and timed; feasible ones ranked by step time."""

from __future__ import annotations

from dataclasses import dataclass, field

from erl_mega.plan.memory import RolloutMemory, TrainerMemory, rollout_memory, trainer_memory
from erl_mega.plan.params import total_params
from erl_mega.plan.shape import ModelShape
from erl_mega.plan.spec import PlanConfig
from erl_mega.plan import timing

GB = 1e9


@dataclass(frozen=True)
class LayoutPlan:
    tp: int
    pp: int
    dp: int
    vpp: int
    reasons: tuple[str, ...]  # empty when feasible
    trainer: TrainerMemory | None = None
    rollout: RolloutMemory | None = None
    phases_gb: dict[str, float] = field(default_factory=dict)  # peak per GPU in each phase
    seconds: dict[str, float] = field(default_factory=dict)
    sync_bytes_per_link: float = 0.0

    @property
    def feasible(self) -> bool:
        return not self.reasons


def _divisibility(m: ModelShape, tp: int, pp: int, vpp: int, gpus: int) -> list[str]:
    problems = [f"{name}={value} not divisible by tp={tp}" for name, value in
                (("heads", m.heads), ("kv_heads", m.kv_heads), ("vocab", m.vocab), ("ffn", m.ffn)) if value % tp]
    if m.layers % (pp * vpp):
        problems.append(f"layers={m.layers} not divisible by pp*vpp={pp * vpp}")
    if gpus % (tp * pp):
        problems.append(f"tp*pp={tp * pp} does not divide the {gpus} trainer GPUs")
    return problems


def _phases(cfg: PlanConfig, t: TrainerMemory, r: RolloutMemory) -> dict[str, float]:
    """Colocated, in order: trainer state offloaded to host -> rollout (engine weights + KV); engine released,
    trainer back -> train; engine weights resumed beside the trainer's params -> sync; KV resumed."""
    if cfg.placement.mode == "colocated":
        return {"rollout": (r.weights + r.kv_cache) / GB, "train": t.peak / GB, "sync": (t.params + r.weights) / GB}
    return {"rollout": (r.weights + r.kv_cache) / GB, "train": t.peak / GB}


def plan_layout(m: ModelShape, cfg: PlanConfig, tp: int, pp: int, vpp: int) -> LayoutPlan:
    c, p, algo = cfg.cluster, cfg.placement, cfg.workload.algo
    gpus = c.gpus - (p.rollout_gpus if p.mode == "disaggregated" else 0)
    problems = _divisibility(m, tp, pp, vpp, gpus)
    if problems:
        return LayoutPlan(tp, pp, gpus // (tp * pp), vpp, tuple(problems))  # dp as the GPUs would give it
    dp = gpus // (tp * pp)
    mbs = timing.micro_batches_per_rank(cfg, algo, dp)
    if vpp > 1 and mbs % pp:
        problems.append(f"interleaving needs micro-batches per rank ({mbs}) divisible by pp={pp}")
    seq = max(s for _, s in timing.train_rows(cfg, algo))
    trainer = trainer_memory(m, tp, pp, dp, vpp, seq, cfg.train.micro_batch_size, mbs, cfg.train.recompute,
                             cfg.train.params_dtype)
    n = total_params(m)
    longest = max(ph.prompt + ph.gen for ph in timing.rollout_phases(cfg, algo))
    rollout = rollout_memory(m, n, p.rollout_tp, c.gpu_memory_gb * GB, p.memory_fraction, longest)
    phases = _phases(cfg, trainer, rollout)
    problems += [f"out of memory in {name}: {gb:.1f} GB > {c.gpu_memory_gb:g} GB" for name, gb in phases.items()
                 if gb > c.gpu_memory_gb]
    if rollout.seqs_fit < 1:
        problems.append(f"rollout KV cache holds no {longest}-token sequence at rollout_tp={p.rollout_tp}")
        return LayoutPlan(tp, pp, dp, vpp, tuple(problems), trainer, rollout, phases)
    engines = (c.gpus if p.mode == "colocated" else p.rollout_gpus) // p.rollout_tp
    sync, per_link = timing.sync_seconds(n, cfg, pp)
    seconds = {"rollout": timing.rollout_seconds(m, n, cfg, algo, engines, rollout.seqs_fit),
               "train": timing.train_seconds(m, cfg, algo, gpus, pp, vpp, dp), "sync": sync}
    if p.mode == "colocated":
        seconds["step"] = sum(seconds.values())
    else:  # the sides run one after the other within a step (no async overlap planned here)
        seconds["step"] = seconds["rollout"] + seconds["train"] + sync
    if algo == "erl":
        grpo = timing.rollout_seconds(m, n, cfg, "grpo", engines, rollout.seqs_fit) + timing.train_seconds(
            m, cfg, "grpo", gpus, pp, vpp, dp) + sync
        seconds["erl_over_grpo"] = seconds["step"] / grpo
    return LayoutPlan(tp, pp, dp, vpp, tuple(problems), trainer, rollout, phases, seconds, per_link)


def candidates(cfg: PlanConfig) -> list[tuple[int, int, int]]:
    """TP within a node (powers of two), PP up to 16, VPP up to 8 under PP > 1; checks come later."""
    tps = [t for t in (1, 2, 4, 8, 16) if t <= cfg.cluster.gpus_per_node]
    return [(tp, pp, vpp) for tp in tps for pp in (1, 2, 4, 8, 16) for vpp in (range(1, 9) if pp > 1 else [1])]


def plan_all(m: ModelShape, cfg: PlanConfig) -> list[LayoutPlan]:
    """Feasible layouts fastest first, then the rejected ones with their reasons."""
    plans = [plan_layout(m, cfg, tp, pp, vpp) for tp, pp, vpp in candidates(cfg)]
    feasible = sorted((p for p in plans if p.feasible), key=lambda p: p.seconds["step"])
    return feasible + [p for p in plans if not p.feasible]
