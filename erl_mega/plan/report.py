"""The plan as a rich table, as JSON, and as a per-phase memory plot."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from rich.console import Console
from rich.table import Table

from erl_mega.plan.layouts import GB, LayoutPlan
from erl_mega.plan.params import total_params
from erl_mega.plan.shape import ModelShape


def _name(p: LayoutPlan) -> str:
    return f"tp{p.tp} pp{p.pp} dp{p.dp}" + (f" vpp{p.vpp}" if p.vpp > 1 else "")


def table(m: ModelShape, plans: list[LayoutPlan], top: int) -> Table:
    feasible = [p for p in plans if p.feasible][:top]
    t = Table(title=f"{m.name}: {total_params(m) / 1e9:.2f}B params, {len(feasible)} fastest feasible layouts")
    for col in ("layout", "params", "grads", "optim", "acts", "train GB", "rollout GB", "seqs/engine",
                "rollout s", "train s", "sync s", "step s", "ERL/GRPO"):
        t.add_column(col, justify="right")
    for p in feasible:
        tr, s = p.trainer, p.seconds
        t.add_row(_name(p), f"{tr.params / GB:.1f}", f"{tr.grads / GB:.1f}", f"{(tr.optimizer + tr.main_weights) / GB:.1f}",
                  f"{tr.activations / GB:.1f}", f"{p.phases_gb['train']:.1f}", f"{p.phases_gb['rollout']:.1f}",
                  str(p.rollout.seqs_fit), f"{s['rollout']:.1f}", f"{s['train']:.1f}", f"{s['sync']:.2f}",
                  f"{s['step']:.1f}", f"{s.get('erl_over_grpo', 1.0):.2f}")
    return t


def print_plan(m: ModelShape, plans: list[LayoutPlan], top: int) -> None:
    console = Console(width=180)
    console.print(table(m, plans, top))
    rejected = [p for p in plans if not p.feasible]
    console.print(f"[bold]{len(rejected)} rejected layouts[/bold] (first reason each):")
    for p in rejected[:top]:
        console.print(f"  {_name(p)}: {p.reasons[0]}")


def as_json(m: ModelShape, plans: list[LayoutPlan]) -> str:
    def row(p: LayoutPlan) -> dict:
        d = dataclasses.asdict(p)
        if p.trainer is not None:
            d["trainer"]["peak"] = p.trainer.peak
        return d
    return json.dumps({"model": dataclasses.asdict(m), "params": total_params(m), "layouts": [row(p) for p in plans]})


def plot(plans: list[LayoutPlan], path: Path, gpu_memory_gb: float, top: int) -> None:
    """Grouped bars: peak GB per GPU in each phase, per feasible layout, against the GPU's memory."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [p for p in plans if p.feasible][:top]
    phases = list(shown[0].phases_gb) if shown else []
    fig, ax = plt.subplots(figsize=(max(6, len(shown)), 4))
    width = 0.8 / max(1, len(phases))
    for i, phase in enumerate(phases):
        ax.bar([x + i * width for x in range(len(shown))], [p.phases_gb[phase] for p in shown], width, label=phase)
    ax.axhline(gpu_memory_gb, color="k", linestyle="--", label="GPU memory")
    ax.set_xticks([x + width * (len(phases) - 1) / 2 for x in range(len(shown))], [_name(p) for p in shown], rotation=30, ha="right")
    ax.set_ylabel("GB per GPU")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
