"""`erl-mega train`: the whole ERL loop, top to bottom.

    erl-mega train                    # ERL on FrozenLake with the embedded tiny model, on CPU
    erl-mega train algo=grpo          # the plain-GRPO baseline, everything else equal

Per step: collect episodes (attempt 1, reflection, attempt 2) -> rows with group advantages ->
TrainBatch -> one optimizer step -> weights to the rollout engine -> metrics, checkpoint.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from transformers import AutoModelForCausalLM

from erl_mega.algo.erl import ErlWorkflow, Episodes
from erl_mega.algo.memory import ReflectionMemory
from erl_mega.algo.prompts import with_action_format
from erl_mega.algo.rows import distill_rows, policy_rows
from erl_mega.config.schema import RunConfig
from erl_mega.envs.base import make_env, task_seed
from erl_mega.evaluate import EvalResult, evaluate
from erl_mega.metrics import MetricsLog
from erl_mega.model.hf_io import load_hf_config, load_tokenizer
from erl_mega.model.warmup import ensure_base_policy
from erl_mega.report import eval_table, plot_curves, write_samples
from erl_mega.rollout.chat import ChatFormat
from erl_mega.rollout.engine import SamplingParams
from erl_mega.rollout.local import LocalEngine
from erl_mega.rollout.trajectory import Segment
from erl_mega.train.batch import collate
from erl_mega.train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from erl_mega.train.megatron_trainer import LossConfig, MegatronTrainer
from erl_mega.weights.sync import InProcessWeightSync


@dataclass
class Components:
    """Everything a run holds: built once, from the validated config."""

    cfg: RunConfig
    policy_dir: Path
    chat: ChatFormat
    engine: LocalEngine
    make_env: object
    action_format: str
    max_context: int


def progress_bar(console: Console) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        TimeRemainingColumn(), TextColumn("{task.fields[info]}"), console=console,
    )


def resolve_policy(cfg: RunConfig, console: Console) -> Path:
    """`model.path` when set, else the embedded base policy (built and cached on first use)."""
    if cfg.model.path is not None:
        return Path(cfg.model.path).expanduser()
    with progress_bar(console) as bar:
        task = bar.add_task("SFT warm-up (cached after the first run)", total=None, info="")

        def tick(step: int, total: int, loss: float) -> None:
            bar.update(task, completed=step, total=total, info=f"loss {loss:.3f}")

        return ensure_base_policy(cfg.model, cfg.env, cfg.seed, tick)


def build(cfg: RunConfig, console: Console) -> Components:
    """Policy checkpoint, tokenizer, rollout engine and environment factory."""
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    policy_dir = resolve_policy(cfg, console)
    tokenizer = load_tokenizer(policy_dir)
    dtype = torch.float32 if cfg.model.dtype == "float32" else torch.bfloat16
    hf_model = AutoModelForCausalLM.from_pretrained(policy_dir, dtype=dtype)
    engine = LocalEngine(hf_model, tokenizer.pad_token_id, cfg.rollout.max_batch_size)
    env = cfg.env

    def make():
        return make_env(env.name, max_turns=env.max_turns, **env.options)

    max_context = load_hf_config(policy_dir).max_position_embeddings
    return Components(cfg, policy_dir, ChatFormat(tokenizer), engine, make, make().action_format, max_context)


def run_eval(c: Components) -> EvalResult:
    """Held-out first-attempt evaluation of whatever weights the engine holds."""
    return evaluate(c.make_env, c.engine, c.chat, c.cfg.env.initial_prompt, c.action_format, c.cfg.eval_tasks,
                    c.cfg.rollout.max_new_tokens, c.max_context, c.cfg.algo.success_threshold)


def train(cfg: RunConfig) -> dict[str, EvalResult]:
    """Run the configured training; returns the held-out evaluation of the base and the trained policy."""
    console = Console()
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    c = build(cfg, console)
    loss = LossConfig(cfg.algo.loss, cfg.algo.distill_coef, temperature=cfg.rollout.temperature)
    trainer = MegatronTrainer(c.policy_dir, cfg.trainer, loss, seed=cfg.seed)
    sync = InProcessWeightSync()
    memory, start, base_eval = ReflectionMemory(cfg.algo.memory_capacity), 0, None
    checkpoint = latest_checkpoint(out) if cfg.resume else None
    if checkpoint is not None:
        memory, state = load_checkpoint(checkpoint, trainer)
        start, base_eval = state["step"], state.get("base_eval")
        sync.push(trainer, [c.engine])
        console.print(f"resumed from {checkpoint} at step {start}")
    if base_eval is None:
        result = run_eval(c)
        base_eval = {"success": result.success, "mean_reward": result.mean_reward, "mean_turns": result.mean_turns}
    stop = SamplingParams(cfg.rollout.max_new_tokens, cfg.rollout.temperature, cfg.rollout.top_p, c.chat.stop_ids)
    workflow = ErlWorkflow(
        cfg.algo, c.make_env, c.engine, c.chat, cfg.env.initial_prompt, c.action_format, stop,
        SamplingParams(cfg.rollout.reflect_max_new_tokens, cfg.rollout.temperature, cfg.rollout.top_p, c.chat.stop_ids),
        c.max_context, memory,
    )
    initial_system = Segment(c.chat.system(with_action_format(cfg.env.initial_prompt, c.action_format)))
    log = MetricsLog(out, resume_step=start)
    with progress_bar(console) as bar:
        task = bar.add_task(f"{cfg.algo.name} on {cfg.env.name}", total=cfg.steps, completed=start, info="")
        for step in range(start + 1, cfg.steps + 1):
            metrics = train_step(step, cfg, workflow, trainer, sync, c, initial_system)
            log.write(step, metrics)
            bar.update(task, advance=1, info=_summary(metrics))
            if not console.is_terminal:  # logs (CI, SLURM) get a line per step instead of a live bar
                console.print(f"step {step}/{cfg.steps}: {_summary(metrics)}")
            if cfg.checkpoint_every and (step % cfg.checkpoint_every == 0 or step == cfg.steps):
                save_checkpoint(out, step, trainer, memory, {"base_eval": base_eval})
    log.close()
    final = run_eval(c)
    results = {"base": base_eval, "trained": {"success": final.success, "mean_reward": final.mean_reward, "mean_turns": final.mean_turns}}
    console.print(eval_table(results, cfg))
    write_samples(out / "samples.md", final.episodes[:4])
    if cfg.plot:
        console.print(f"curves: {plot_curves(out / 'metrics.jsonl', results, out / 'curves.png')}")
    return results


def train_step(step: int, cfg: RunConfig, workflow: ErlWorkflow, trainer: MegatronTrainer, sync: InProcessWeightSync,
               c: Components, initial_system: Segment) -> dict[str, float]:
    """One ERL step: collect, build rows, train (engine memory released meanwhile), sync weights."""
    rng = random.Random(cfg.seed * 1_000_003 + step)  # the data position is the step: resume needs no cursor
    seeds = [task_seed("train", rng.randrange(500_000)) for _ in range(cfg.tasks_per_step)]
    clock = time.perf_counter()
    episodes: Episodes = workflow.collect(seeds, sample_seed=cfg.seed * 100_000 + step)
    rollout_seconds = time.perf_counter() - clock
    rows = policy_rows(episodes, cfg.algo.advantage)
    if cfg.algo.name == "erl" and not cfg.algo.no_distill:
        rows += distill_rows(episodes, initial_system)
    batch = collate(rows, c.chat.tokenizer.pad_token_id)
    c.engine.release_memory()
    clock = time.perf_counter()
    metrics = trainer.step(batch)
    train_seconds = time.perf_counter() - clock
    c.engine.resume_memory()
    metrics |= sync.push(trainer, [c.engine])
    trained = float(batch.loss_mask.sum())
    return episodes.metrics | metrics | {
        "rows": float(batch.num_rows),
        "distill_rows": float(batch.is_distill.sum()),
        "time_rollout": rollout_seconds,
        "time_train": train_seconds,
        "train_tokens_per_s": float(batch.input_ids.numel()) / max(train_seconds, 1e-9),
        "sampled_tokens": trained,
    }


def _summary(m: dict[str, float]) -> str:
    text = f"a1 {m['attempt1_success']:.2f}"
    if "attempt2_success" in m:
        text += f" a2 {m['attempt2_success']:.2f}"
    return text + f" gap {m.get('logprob_gap_mean', 0):.1e}"


def evaluate_policy(cfg: RunConfig) -> EvalResult:
    """`erl-mega eval`: held-out first-attempt success of the configured policy, with sample episodes."""
    console = Console()
    c = build(cfg, console)
    result = run_eval(c)
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = {"success": result.success, "mean_reward": result.mean_reward, "mean_turns": result.mean_turns}
    console.print(eval_table({"policy": summary}, cfg))
    console.print(f"episodes: {write_samples(out / 'eval_samples.md', result.episodes[:4])}")
    return result
