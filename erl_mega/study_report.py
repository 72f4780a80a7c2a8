"""The study's report: per run, held-out first-attempt success against environment steps, and the
training signals that explain it; over seeds, mean ± std. Writes study.md, study.png and study.json."""

from __future__ import annotations

import dataclasses
import json
import statistics
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from erl_mega.metrics import read_metrics  # noqa: E402

GRID_POINTS = 21  # environment-step grid the seeds' curves are interpolated on for the bands


def run_record(run) -> dict:
    """What one finished run contributes: final and base held-out success, budget used, curve, diagnostics."""
    results = json.loads((run.out / "results.json").read_text())
    rows = read_metrics(run.out / "metrics.jsonl")
    curve = [(0, results["base"]["success"])]
    curve += [(r["env_steps_total"], r["heldout_success"]) for r in rows if "heldout_success" in r]
    curve.append((results["env_steps"], results["trained"]["success"]))

    def mean(key: str, part: slice = slice(None)) -> float | None:
        values = [r[key] for r in rows[part] if key in r]
        return sum(values) / len(values) if values else None

    third = max(len(rows) // 3, 1)
    return {
        "variant": run.variant, "seed": run.seed, "base": results["base"]["success"],
        "final": results["trained"]["success"], "env_steps": results["env_steps"], "optimizer_steps": len(rows),
        "curve": curve,
        "attempt1_first_third": mean("attempt1_success", slice(0, third)),
        "attempt1_last_third": mean("attempt1_success", slice(-third, None)),
        "attempt2_first_third": mean("attempt2_success", slice(0, third)),
        "attempt2_last_third": mean("attempt2_success", slice(-third, None)),
        "distill_token_share": mean("distill_token_share"), "tag_missing_rate": mean("tag_missing_rate"),
        "memory_updates": mean("memory_updates"),
        "seconds": (run.out / "results.json").stat().st_mtime - (run.out / "config.yaml").stat().st_mtime,
    }


def _pm(values: list[float], scale: float = 100.0, digits: int = 1) -> str:
    if not values:
        return "—"
    mean = statistics.fmean(values) * scale
    std = statistics.stdev(values) * scale if len(values) > 1 else 0.0
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f}"


def write_report(out: Path, study, runs: list, extra: list[str]) -> str:
    """study.md, study.png and study.json for the finished `runs`; returns the summary table (markdown)."""
    records = [run_record(r) for r in runs]
    by_variant = {v: [r for r in records if r["variant"] == v] for v in study.variants}
    head = (f"Held-out first-attempt success (greedy, initial prompt, {study.eval_tasks} tasks from held-out index "
            f"{study.eval_seed_start}), after {study.env_step_budget} sampled environment steps per run; "
            f"mean ± std over seeds. Run overrides: {' '.join(extra) or '(none)'}.\n")
    summary = ["| variant | seeds | held-out success % | base % | gain (points) | env steps | optimizer steps | "
               "train attempt 1 %: first → last third | train attempt 2 %: first → last third | distill token share |",
               "|---|---|---|---|---|---|---|---|---|---|"]
    for variant, rs in by_variant.items():
        if not rs:
            continue
        def both(key: str) -> str:
            first = [r[f"{key}_first_third"] for r in rs if r[f"{key}_first_third"] is not None]
            last = [r[f"{key}_last_third"] for r in rs if r[f"{key}_last_third"] is not None]
            return f"{_pm(first)} → {_pm(last)}" if first else "—"
        shares = [r["distill_token_share"] for r in rs if r["distill_token_share"] is not None]
        summary.append(
            f"| {variant} | {len(rs)} | {_pm([r['final'] for r in rs])} | {_pm([r['base'] for r in rs])} | "
            f"{_pm([r['final'] - r['base'] for r in rs])} | {_pm([r['env_steps'] for r in rs], 1, 0)} | "
            f"{_pm([r['optimizer_steps'] for r in rs], 1, 0)} | {both('attempt1')} | {both('attempt2')} | "
            f"{_pm(shares, 1, 3)} |")
    per_seed = ["| variant | seed | held-out % | base % | env steps | optimizer steps | held-out curve (env steps: %) | "
                "reflections without tag % | wall s |", "|---|---|---|---|---|---|---|---|---|"]
    for r in records:
        curve = ", ".join(f"{x}: {100 * y:.0f}" for x, y in r["curve"])
        per_seed.append(f"| {r['variant']} | {r['seed']} | {_pct(r['final'])} | {_pct(r['base'])} | {r['env_steps']} | "
                        f"{r['optimizer_steps']} | {curve} | {_pct(r['tag_missing_rate'])} | {r['seconds']:.0f} |")
    table = "\n".join(summary)
    (out / "study.md").write_text(f"# erl-mega study\n\n{head}\n{table}\n\n## Per seed\n\n" + "\n".join(per_seed) + "\n")
    (out / "study.json").write_text(json.dumps({"study": dataclasses.asdict(study), "overrides": extra,
                                                "runs": records}, indent=1))
    plot(out / "study.png", by_variant, study.env_step_budget)
    return table


def plot(path: Path, by_variant: dict[str, list[dict]], budget: int) -> None:
    """Held-out success against environment steps: each variant's mean over seeds with a ± std band."""
    grid = np.linspace(0, budget, GRID_POINTS)
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for variant, rs in by_variant.items():
        if not rs:
            continue
        curves = np.array([np.interp(grid, *zip(*r["curve"])) for r in rs]) * 100
        mean, std = curves.mean(0), curves.std(0)
        line = ax.plot(grid, mean, label=f"{variant} ({len(rs)} seeds)")[0]
        ax.fill_between(grid, mean - std, mean + std, color=line.get_color(), alpha=0.15)
    ax.set(xlabel="sampled environment steps", ylabel="held-out first-attempt success %",
           title="held-out success (mean ± std over seeds)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
