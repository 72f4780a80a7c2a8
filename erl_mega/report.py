"""What a run shows at its end: the held-out table, the curves as a PNG, a few episodes as text."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from rich.table import Table  # noqa: E402

from erl_mega.algo.erl import TaskEpisodes  # noqa: E402
from erl_mega.metrics import read_metrics  # noqa: E402
from erl_mega.rollout.chat import ChatFormat  # noqa: E402
from erl_mega.rollout.trajectory import Trajectory  # noqa: E402


def eval_table(results: dict[str, dict], cfg) -> Table:
    """Base vs trained policy on held-out tasks: first attempt, initial prompt, greedy."""
    table = Table(title=f"held-out {cfg.env.name}: first attempt, initial prompt ({cfg.eval_tasks} tasks, greedy)")
    for column in ("policy", "success", "mean reward", "mean turns"):
        table.add_column(column, justify="right" if column != "policy" else "left")
    names = {"base": "base policy", "trained": f"after {cfg.steps} {cfg.algo.name} steps"}
    for key, r in results.items():
        table.add_row(names.get(key, key), f"{100 * r['success']:.1f} %", f"{r['mean_reward']:.3f}", f"{r['mean_turns']:.2f}")
    return table


def plot_curves(metrics_path: Path, results: dict[str, dict], out: Path) -> Path:
    """Training success (attempts 1 and 2), losses and the held-out results, in one PNG."""
    rows = read_metrics(metrics_path)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for key, label in (("attempt1_success", "attempt 1 (train, sampled)"), ("attempt2_success", "attempt 2 (train, sampled)")):
        pts = [(r["step"], r[key]) for r in rows if key in r]
        if pts:
            steps, values = zip(*pts)
            line = ax1.plot(steps, values, marker=".", alpha=0.3)[0]
            ax1.plot(steps, _moving_average(values, SMOOTH), color=line.get_color(), label=f"{label}, mean of {SMOOTH}")
    for key, style in (("base", ":"), ("trained", "--")):
        if key in results:
            ax1.axhline(results[key]["success"], linestyle=style, color="k", label=f"held-out {key} (greedy)")
    ax1.set(xlabel="step", ylabel="success rate", ylim=(0, 1.02), title="success")
    ax1.legend(fontsize=8)
    for key in ("policy_loss", "distill_loss", "kl"):
        pts = [(r["step"], r[key]) for r in rows if key in r]
        if pts:
            ax2.plot(*zip(*pts), label=key)
    ax2.set(xlabel="step", title="losses")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


SMOOTH = 5  # steps averaged in the success curves: one step is only tasks_per_step × n_rollouts episodes


def _moving_average(values: tuple[float, ...], window: int) -> list[float]:
    """Trailing mean over up to `window` points (shorter at the start)."""
    return [sum(values[max(0, i - window + 1) : i + 1]) / (i - max(0, i - window + 1) + 1) for i in range(len(values))]


def write_samples(path: Path, episodes: tuple[Trajectory, ...] | list[Trajectory]) -> Path:
    """A few episodes as readable Markdown: each reply and the environment's answer."""
    lines = []
    for i, ep in enumerate(episodes):
        lines.append(f"## episode {i + 1}: reward {ep.reward}\n")
        for t, turn in enumerate(ep.turns):
            lines.append(f"{t + 1}. `{turn.reply.strip()}` -> {turn.feedback}")
        lines.append("")
    path.write_text("\n".join(lines))
    return path


def write_task_samples(path: Path, tasks: tuple[TaskEpisodes, ...], chat: ChatFormat) -> Path:
    """A few tasks as Markdown: attempt 1, the reflection and attempt 2, each exactly as the model saw it."""
    lines = []
    for i, task in enumerate(tasks):
        lines.append(f"## task {i + 1} (environment seed {task.env_seed})\n")
        calls = [("attempt 1", tr) for tr in task.attempt1]
        for reflection, retry in zip(task.reflections, task.attempt2):
            calls += [("reflection", reflection), ("attempt 2, under the reflection's prompt", retry)]
        if task.attempt2 and not task.reflections:
            calls += [("attempt 2 (no reflection)", tr) for tr in task.attempt2]
        for title, tr in calls:
            verdict = f"reward {tr.reward}"
            if title == "reflection":
                kept = tr.meta["tag_missing"]
                verdict = "no <prompt> tag, the prompt is kept" if kept else f"new prompt {tr.meta['prompt']!r}"
            transcript = chat.tokenizer.decode(tr.token_ids(), skip_special_tokens=False)  # ChatML markers kept
            lines += [f"### {title}: {verdict}\n", "```", transcript, "```", ""]
    path.write_text("\n".join(lines))
    return path
