"""`erl-mega train`: the whole ERL loop, top to bottom.

    erl-mega train                    # ERL on FrozenLake with the embedded tiny model, on CPU
    erl-mega train algo=grpo          # the plain-GRPO baseline, everything else equal

Per step: collect episodes (attempt 1, reflection, attempt 2) -> rows with group advantages ->
TrainBatch -> one optimizer step -> weights to the rollout engine -> metrics, checkpoint.
The rollout side (in-process engine or servers) is built by erl_mega/rollout/build.py; with servers
placed apart and `trainer.async_steps > 0` collection runs ahead of training (erl_mega/async_loop.py).
"""

from __future__ import annotations

import json
import random
import signal
import sys
import threading
import time
from contextlib import closing, contextmanager, nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from erl_mega.algo.erl import ErlWorkflow, Episodes
from erl_mega.algo.memory import ReflectionMemory
from erl_mega.algo.rows import distill_rows, policy_rows
from erl_mega.async_loop import AsyncCollector
from erl_mega.config import run_record
from erl_mega.config.schema import RunConfig
from erl_mega.envs.base import Env, make_env, task_seed
from erl_mega.evaluate import EvalResult, evaluate
from erl_mega.metrics import MetricsLog
from erl_mega.peak_memory import PhaseMemory
from erl_mega.run_dir import RunLock, check_out_dir, claim_for_run
from erl_mega.model.gguf import ensure_converted
from erl_mega.model.hf_io import load_hf_config, load_tokenizer
from erl_mega.model.warmup import ensure_base_policy
from erl_mega.report import eval_table, plot_curves, write_samples, write_task_samples
from erl_mega.rollout.build import Rollout, build_rollout
from erl_mega.rollout.chat import ChatFormat
from erl_mega.rollout.engine import RolloutEngine, SamplingParams
from erl_mega.rollout.trajectory import Trajectory
from erl_mega.train.batch import TrainBatch, collate
from erl_mega.train.checkpoint import load_checkpoint, resume_point, save_checkpoint
from erl_mega.train.dist import broadcast_from_leader, init_parallel, is_leader
from erl_mega.train.megatron_trainer import LossConfig, MegatronTrainer
from erl_mega.weights.sync import InProcessWeightSync

if TYPE_CHECKING:  # the SDK needs the `agents` extra; only runs with agent.entry import it
    from erl_mega.sdk.attempts import GatewayAttempts


@dataclass
class Components:
    """Everything a run holds: built once, from the validated config."""

    cfg: RunConfig
    policy_dir: Path
    chat: ChatFormat
    rollout: Rollout
    make_env: Callable[[], Env]
    action_format: str
    max_context: int
    attempts: GatewayAttempts | None = None  # agent.entry's agent through an in-process gateway; None: the native loop

    @property
    def engine(self) -> RolloutEngine:
        return self.rollout.engine


def progress_bar(console: Console) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        TimeRemainingColumn(), TextColumn("{task.fields[info]}"), console=console,
    )


def resolve_policy(cfg: RunConfig, console: Console) -> Path:
    """`model.path`, else `model.source` converted to an HF directory, else the embedded base policy (each cached)."""
    if cfg.model.path is not None:
        return Path(cfg.model.path).expanduser()
    if cfg.model.source is not None:
        with console.status(f"{cfg.model.source}: HF checkpoint (converted once, then cached)"):
            return ensure_converted(cfg.model.source, cfg.model.cache_dir)
    with progress_bar(console) as bar:
        task = bar.add_task("SFT warm-up (cached after the first run)", total=None, info="")

        def tick(step: int, total: int, loss: float) -> None:
            bar.update(task, completed=step, total=total, info=f"loss {loss:.3f}")

        return ensure_base_policy(cfg.model, cfg.env, cfg.trainer, tick)


def build(cfg: RunConfig, console: Console, policy_dir: Path | None = None) -> Components:
    """Policy checkpoint, tokenizer, rollout side and environment factory (the leader's); close `c.rollout` after."""
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    policy_dir = policy_dir or resolve_policy(cfg, console)
    tokenizer = load_tokenizer(policy_dir)
    env = cfg.env

    def make():
        return make_env(env.name, max_turns=env.max_turns, **env.options)

    max_context, action_format = load_hf_config(policy_dir).max_position_embeddings, make().action_format
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    r = cfg.rollout
    with console.status(f"rollout: {r.backend}" + ("" if r.backend == "local" else f", {r.num_servers} server(s)")):
        rollout = build_rollout(cfg, policy_dir, tokenizer.pad_token_id, out)
    chat = ChatFormat(tokenizer)
    attempts = None
    if cfg.agent.entry is not None:
        from erl_mega.sdk import GatewayAttempts, load_agent

        attempts = GatewayAttempts.in_process(load_agent(cfg.agent.entry), rollout.engine, chat, make, max_context,
                                              cfg.agent.concurrency)
    return Components(cfg, policy_dir, chat, rollout, make, action_format, max_context, attempts)


def run_eval(c: Components) -> EvalResult:
    """Held-out first-attempt evaluation of whatever weights the engine holds."""
    return evaluate(c.make_env, c.engine, c.chat, c.cfg.env.initial_prompt, c.action_format, c.cfg.eval_tasks,
                    c.cfg.rollout.max_new_tokens, c.max_context, c.cfg.algo.success_threshold, c.cfg.eval_seed_start,
                    c.attempts)


def train(cfg: RunConfig) -> dict[str, dict] | None:
    """Run the configured training; returns the held-out evaluation of the base and the trained policy.

    Under torchrun every rank runs this: all ranks hold the Megatron trainer (TP × PP × DP); the
    leader (global rank 0) also holds the rollout engine, collects episodes, evaluates and writes
    the run's files, and broadcasts each TrainBatch. Other ranks return None.
    """
    init_parallel(cfg.trainer.tp, cfg.trainer.pp, cfg.seed)
    leader = is_leader()
    out = Path(cfg.out_dir)
    if not leader:
        return _train(cfg, out, leader)
    check_out_dir(out)
    with RunLock(out):
        claim_for_run(out, cfg.resume, cfg.overwrite)
        run_record.write(cfg, out)
        return _train(cfg, out, leader)


def _train(cfg: RunConfig, out: Path, leader: bool) -> dict[str, dict] | None:
    console = Console(quiet=not leader)
    policy_dir = resolve_policy(cfg, console)
    loss = LossConfig(cfg.algo.loss, cfg.algo.distill_coef)  # rows carry their own sampling temperature
    params_dtype = torch.float32 if cfg.model.dtype == "float32" else torch.bfloat16
    trainer = MegatronTrainer(policy_dir, cfg.trainer, loss, seed=cfg.seed, params_dtype=params_dtype)
    with _sigterm_exits():
        c = build(cfg, console, policy_dir) if leader else None
        try:
            return _run(cfg, out, console, trainer, c)
        finally:
            if c is not None:  # servers we started (and an agent's gateway) end with the run, whatever ended it
                if c.attempts is not None:
                    c.attempts.close()
                c.rollout.close()


@contextmanager
def _sigterm_exits() -> Iterator[None]:
    """SIGTERM (kill, scancel) ends the run as an exception would: through the finally blocks that end its servers."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _run(cfg: RunConfig, out: Path, console: Console, trainer: MegatronTrainer, c: Components | None) -> dict | None:
    leader = c is not None
    memory, start, base_eval, env_steps = ReflectionMemory(cfg.algo.memory_capacity), 0, None, 0
    checkpoint = resume_point(out) if cfg.resume else None
    if checkpoint is not None:
        memory, state = load_checkpoint(checkpoint, trainer)
        start, base_eval, env_steps = state["step"], state.get("base_eval"), state.get("env_steps", 0)
        push_weights(trainer, c)
        console.print(f"resumed from {checkpoint} at step {start}")
    if leader and base_eval is None:
        base_eval = _row(run_eval(c))
    workflow = make_workflow(cfg, c, memory) if leader else None
    log = MetricsLog(out, resume_step=start) if leader else None
    collector = _collector(cfg, c, workflow, start, env_steps, console)
    phases = PhaseMemory(c.rollout.pids if leader else list)
    with progress_bar(console) as bar, closing(collector) if collector else nullcontext():
        task = bar.add_task(f"{cfg.algo.name} on {cfg.env.name}", total=cfg.steps, completed=start, info="")
        for step in range(start + 1, cfg.steps + 1):
            if cfg.env_step_budget and env_steps >= cfg.env_step_budget:
                break
            clock = time.perf_counter()
            metrics = train_step(step, cfg, workflow, trainer, c, collector, phases)
            env_steps += int(broadcast_from_leader(metrics.get("env_steps", 0.0)))
            if leader:
                metrics["env_steps_total"] = float(env_steps)
                if cfg.eval_every and step % cfg.eval_every == 0:
                    metrics["heldout_success"] = run_eval(c).success
                log.write(step, metrics | {"time_step": time.perf_counter() - clock})
                bar.update(task, advance=1, info=_summary(metrics))
                if not console.is_terminal:  # logs (CI, SLURM) get a line per step instead of a live bar
                    console.print(f"step {step}/{cfg.steps}: {_summary(metrics)}")
            last = step == cfg.steps or (cfg.env_step_budget and env_steps >= cfg.env_step_budget)
            if cfg.checkpoint_every and (step % cfg.checkpoint_every == 0 or last):
                save_checkpoint(out, step, trainer, memory, {"base_eval": base_eval, "env_steps": env_steps})
            if collector is not None:
                collector.done(step)
    if not leader:
        return None
    log.close()
    final = run_eval(c)
    results = {"base": base_eval, "trained": _row(final)}
    (out / "results.json").write_text(json.dumps(results | {"env_steps": env_steps}, indent=1))  # also: the run finished
    console.print(eval_table(results, cfg))
    write_samples(out / "samples.md", final.episodes[:4])
    if cfg.plot:
        console.print(f"curves: {plot_curves(out / 'metrics.jsonl', results, out / 'curves.png')}")
    return results


def _collector(cfg: RunConfig, c: Components | None, workflow: ErlWorkflow | None, start: int, env_steps: int,
               console: Console) -> AsyncCollector | None:
    """The leader's rollout producer when `trainer.async_steps > 0` and rollout has devices of its own."""
    k = cfg.trainer.async_steps
    if c is None or not k:
        return None
    if c.rollout.colocated:
        console.print(f"trainer.async_steps={k}: rollout is colocated with training (rollout.placement), so it runs "
                      "synchronously; use rollout=server|sglang rollout.placement=disaggregated to overlap them")
        return None
    if cfg.algo.loss.off_policy.mode is None and cfg.algo.loss.tis_cap is None:
        console.print(f"trainer.async_steps={k}: rows up to {k} versions old train without importance correction; "
                      "set algo.loss.off_policy.mode=truncate (TIS) or mask (MIS)")
    return AsyncCollector(lambda step: collect_batch(step, cfg, workflow, c), start, cfg.steps, k, cfg.checkpoint_every,
                          env_steps, cfg.env_step_budget)


def make_workflow(cfg: RunConfig, c: Components, memory: ReflectionMemory) -> ErlWorkflow:
    """The ERL workflow over the leader's engine, with the run's sampling settings."""
    r = cfg.rollout
    act = SamplingParams(r.max_new_tokens, r.temperature, r.top_p, c.chat.stop_ids)
    reflect = SamplingParams(r.reflect_max_new_tokens, r.reflect_temperature, r.reflect_top_p, c.chat.stop_ids)
    return ErlWorkflow(cfg.algo, c.make_env, c.engine, c.chat, cfg.env.initial_prompt, c.action_format, act, reflect,
                       c.max_context, memory, c.attempts)


def collect_batch(step: int, cfg: RunConfig, workflow: ErlWorkflow, c: Components) -> tuple[TrainBatch, dict[str, float]]:
    """The leader's half of a step: episodes for this step's tasks, turned into one TrainBatch."""
    rng = random.Random(cfg.seed * 1_000_003 + step)  # the data position is the step: resume needs no cursor
    seeds = [task_seed("train", rng.randrange(500_000)) for _ in range(cfg.tasks_per_step)]
    clock = time.perf_counter()
    episodes: Episodes = workflow.collect(seeds, sample_seed=cfg.seed * 100_000 + step)
    rollout_seconds = time.perf_counter() - clock
    rows = policy_rows(episodes, cfg.algo.advantage)
    if cfg.algo.name == "erl" and not cfg.algo.no_distill:
        # attempt 1's system segment: the initial prompt as the attempts saw it (an agent's tools included)
        initial = episodes.tasks[0].attempt1[0].segments[0]
        rows += distill_rows(episodes, initial, cfg.algo.distill)
    batch = collate(rows, c.chat.tokenizer.pad_token_id)
    distilled = torch.tensor([r.role == "distill" or r.kind == "distill" for r in rows])
    sampled = float((batch.loss_mask * (~distilled)[:, None]).sum())
    return batch, episodes.metrics | {
        "rows": float(batch.num_rows),
        "distill_rows": float(distilled.sum()),
        "distill_token_share": float((batch.loss_mask * distilled[:, None]).sum()) / max(float(batch.loss_mask.sum()), 1.0),
        "env_steps": float(sum(len(tr.turns) for t in episodes.tasks for tr in t.attempt1 + t.attempt2)),
        # gateway episodes (agent.entry): calls whose history did not match what was sampled; 0 for the native loop
        "prefix_mismatches": float(sum(tr.meta.get("prefix_mismatches", 0) for t in episodes.tasks
                                       for tr in t.attempt1 + t.attempt2)),
        "time_rollout": rollout_seconds,
        "rollout_tokens_per_s": sampled / max(rollout_seconds, 1e-9),
    }


def train_step(step: int, cfg: RunConfig, workflow: ErlWorkflow | None, trainer: MegatronTrainer,
               c: Components | None, collector: AsyncCollector | None, phases: PhaseMemory) -> dict[str, float]:
    """One ERL step: the leader collects (or takes the producer's batch), every rank trains, weights are pushed.

    Colocated rollout memory is released for the train step; peak memory is logged per phase.
    """
    metrics: dict[str, float] = {}
    with phases.phase("rollout", metrics):
        if c is None:
            batch = None
        elif collector is not None:
            batch, collected = collector.take(step, trainer.version)
            metrics |= collected
        else:
            batch, collected = collect_batch(step, cfg, workflow, c)
            metrics |= collected
    batch = broadcast_from_leader(batch)
    if c is not None:
        c.rollout.release()
    with phases.phase("train", metrics):
        clock = time.perf_counter()
        metrics |= trainer.step(batch)
        seconds = time.perf_counter() - clock
    with phases.phase("push", metrics):
        metrics |= push_weights(trainer, c)
    return metrics | {"time_train": seconds, "train_tokens_per_s": float(batch.input_ids.numel()) / max(seconds, 1e-9)}


def push_weights(trainer: MegatronTrainer, c: Components | None) -> dict[str, float]:
    """The trainer's weights into the leader's rollout engine; other ranks take part in the bucket stream."""
    return c.rollout.push(trainer) if c is not None else InProcessWeightSync().push(trainer, [])


def _row(result: EvalResult) -> dict[str, float]:
    return {"success": result.success, "mean_reward": result.mean_reward, "mean_turns": result.mean_turns}


def _summary(m: dict[str, float]) -> str:
    text = f"a1 {m['attempt1_success']:.2f}"
    if "attempt2_success" in m:
        text += f" a2 {m['attempt2_success']:.2f}"
    return text + f" gap {m.get('logprob_gap_mean', 0):.1e}"


def evaluate_policy(cfg: RunConfig) -> dict[str, dict]:
    """`erl-mega eval`: held-out first-attempt success, greedy; with `algo=erl` each failure also reflects and retries.

    The first attempts are exactly `evaluate`'s (initial prompt, held-out seeds, greedy). Writes
    `eval_samples.md`: a few tasks as the model saw them (attempt 1, reflection, attempt 2).
    """
    if cfg.eval_tasks < 1:
        raise ValueError(f"eval_tasks={cfg.eval_tasks}; `erl-mega eval` needs >= 1")
    console = Console()
    c = build(cfg, console)
    act = SamplingParams(cfg.rollout.max_new_tokens, 0.0, stop_token_ids=c.chat.stop_ids)
    reflect = SamplingParams(cfg.rollout.reflect_max_new_tokens, 0.0, stop_token_ids=c.chat.stop_ids)
    workflow = ErlWorkflow(  # one greedy attempt per task; reflections start from the initial prompt
        replace(cfg.algo, n_rollouts=1), c.make_env, c.engine, c.chat, cfg.env.initial_prompt, c.action_format, act,
        reflect, c.max_context, ReflectionMemory(cfg.algo.memory_capacity), c.attempts,
    )
    try:
        with c.rollout:  # servers we started end here
            episodes = workflow.collect([task_seed("test", i) for i in range(cfg.eval_tasks)], sample_seed=cfg.seed)
    finally:
        if c.attempts is not None:  # the agent's gateway thread, as `train` closes it
            c.attempts.close()
    tau = cfg.algo.success_threshold
    results = {"attempt 1": _held_out_row([t.attempt1[0] for t in episodes.tasks], tau)}
    retried = [a for t in episodes.tasks for a in t.attempt2]
    if retried:
        results[f"attempt 2 after reflection ({len(retried)} failed)"] = _held_out_row(retried, tau)
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    console.print(eval_table(results, cfg))
    if "tag_missing_rate" in episodes.metrics:
        console.print(f"reflections without a <prompt> tag (prompt kept): {episodes.metrics['tag_missing_rate']:.0%}")
    console.print(f"episodes: {write_task_samples(out / 'eval_samples.md', episodes.tasks[:4], c.chat)}")
    return results


def _held_out_row(episodes: list[Trajectory], tau: float) -> dict[str, float]:
    n = len(episodes)
    return {
        "success": sum(e.reward >= tau for e in episodes) / n,
        "mean_reward": sum(e.reward for e in episodes) / n,
        "mean_turns": sum(len(e.turns) for e in episodes) / n,
    }
