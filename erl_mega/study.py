"""`erl-mega study`: ERL against GRPO and ERL's ablations over several seeds, at an equal budget of sampled
environment steps, scored on held-out first-attempt success.

    erl-mega study                                  # FrozenLake, the embedded model, configs/study/default.yaml
    erl-mega study env=sokoban study.seeds=5 study.eval_seed_start=424242

Every (variant, seed) is one `erl-mega train` process under `<study.out>/<variant>/seed<k>/` that stops once
`study.env_step_budget` environment steps were sampled and evaluates the held-out tasks every
`study.eval_every` steps, on held-out task indices from `study.eval_seed_start` (a range no run trains on).
Runs go `study.parallel` at a time (0: one per core); a finished run (its `results.json`) is skipped, a
partial one resumes from its latest checkpoint. Keys other than `study.*` go to every run. Writes
`study.md` (mean ± std over seeds and per seed), `study.png` (held-out success against environment steps,
mean ± std bands) and `study.json`.
"""

from __future__ import annotations

import importlib.resources
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from omegaconf import OmegaConf

from erl_mega.config.schema import build

VARIANTS = {  # name -> the run overrides that make it
    "erl": ["algo=erl"],
    "grpo": ["algo=grpo"],
    "no_memory": ["algo=erl", "algo.no_memory=true"],
    "no_reflection": ["algo=erl", "algo.no_reflection=true"],
    "no_distill": ["algo=erl", "algo.no_distill=true"],
}
RUN_STEPS = 100_000  # the step cap each run gets: the environment-step budget is what ends it


@dataclass(frozen=True)
class StudyConfig:
    """The study's own knobs (`study.*`); configs/study/<option>.yaml sets them."""

    variants: list = field(metadata={"allowed": "any"})  # names from VARIANTS, checked below
    seeds: int = field(metadata={"allowed": ">= 1"})
    env_step_budget: int = field(metadata={"allowed": ">= 1"})
    eval_every: int = field(metadata={"allowed": ">= 1"})
    eval_tasks: int = field(metadata={"allowed": ">= 1"})
    eval_seed_start: int = field(metadata={"allowed": "[0, 999999]"})
    out: str = field(metadata={"allowed": "nonempty"})
    parallel: int = field(default=0, metadata={"allowed": ">= 0"})  # 0: one run per core
    checkpoint_every: int = field(default=5, metadata={"allowed": ">= 1"})

    def __post_init__(self) -> None:
        unknown = [v for v in self.variants if v not in VARIANTS]
        if not self.variants or unknown:
            raise ValueError(f"study.variants={self.variants}: choose a non-empty list from {list(VARIANTS)}")


def load_study(args: list[str]) -> tuple[StudyConfig, list[str]]:
    """Split `args` into the study's config (`study=<option>`, `study.key=value`) and the runs' overrides."""
    option, values, runs = "default", {}, []
    for arg in args:
        key, _, value = arg.partition("=")
        if key == "study":
            option = value
        elif key.startswith("study."):
            values[key.removeprefix("study.")] = yaml.safe_load(value) if value else value
        else:
            runs.append(arg)
    root = importlib.resources.files("erl_mega.configs") / "study"
    options = sorted(f.name.removesuffix(".yaml") for f in root.iterdir() if f.name.endswith(".yaml"))
    if option not in options:
        raise ValueError(f"study={option!r} is not a study option; choose one of {options}")
    raw = OmegaConf.to_container(OmegaConf.load(str(root / f"{option}.yaml"))) | values
    return build(StudyConfig, raw, "study."), runs


@dataclass(frozen=True)
class Run:
    variant: str
    seed: int
    out: Path

    @property
    def finished(self) -> bool:
        return (self.out / "results.json").exists()


def run_overrides(study: StudyConfig, run: Run, extra: list[str]) -> list[str]:
    """The `erl-mega train` overrides of one run (resume=true when it has a checkpoint)."""
    resume = (run.out / "latest").exists()
    return VARIANTS[run.variant] + extra + [
        f"seed={run.seed}", f"out_dir={run.out}", f"steps={RUN_STEPS}", f"env_step_budget={study.env_step_budget}",
        f"eval_every={study.eval_every}", f"eval_tasks={study.eval_tasks}", f"eval_seed_start={study.eval_seed_start}",
        f"checkpoint_every={study.checkpoint_every}", "plot=false", f"resume={str(resume).lower()}",
        f"overwrite={str(not resume).lower()}",
    ]


def env_steps_done(run: Run) -> int:
    """Environment steps the run has logged so far (its budget once finished)."""
    if run.finished:
        return json.loads((run.out / "results.json").read_text())["env_steps"]
    path = run.out / "metrics.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    try:
        return int(json.loads(lines[-1]).get("env_steps_total", 0)) if lines else 0
    except ValueError:  # a line being written
        return 0


def study_main(args: list[str]) -> int:
    """`erl-mega study [study.key=value ...] [run overrides ...]`."""
    from rich.console import Console

    from erl_mega.cli import load_config
    from erl_mega.run import progress_bar, resolve_policy
    from erl_mega.study_report import write_report

    console = Console()
    try:
        study, extra = load_study(args)
        for variant in study.variants:  # every run's config is valid before anything starts: one line if not
            cfg = load_config(VARIANTS[variant] + extra + [f"eval_seed_start={study.eval_seed_start}"])
    except ValueError as err:
        print(f"erl-mega: config error: {err}", file=sys.stderr)
        return 2
    out = Path(study.out)
    runs = [Run(v, s, out / v / f"seed{s}") for v in study.variants for s in range(study.seeds)]
    resolve_policy(cfg, console)  # the shared base policy, built once before the runs start
    parallel = study.parallel or os.cpu_count() or 1
    todo = [r for r in runs if not r.finished]
    console.print(f"study: {len(runs)} runs ({len(runs) - len(todo)} finished), {parallel} at a time, "
                  f"{study.env_step_budget} environment steps each -> {out}")
    live: dict[Run, subprocess.Popen] = {}
    failed: list[Run] = []
    env = os.environ | {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    with progress_bar(console) as bar:
        task = bar.add_task("study (environment steps)", total=study.env_step_budget * len(runs), info="")
        while todo or live:
            while todo and len(live) < parallel:
                run = todo.pop(0)
                run.out.mkdir(parents=True, exist_ok=True)
                log = open(run.out / "train.log", "a")
                live[run] = subprocess.Popen([sys.executable, "-m", "erl_mega", "train", *run_overrides(study, run, extra)],
                                             stdout=log, stderr=subprocess.STDOUT, env=env)
            time.sleep(2)
            for run, proc in list(live.items()):
                if proc.poll() is not None:
                    del live[run]
                    if proc.returncode != 0 or not run.finished:
                        failed.append(run)
                        console.print(f"[red]{run.variant} seed {run.seed} failed (exit {proc.returncode}); "
                                      f"see {run.out / 'train.log'}")
            done = sum(min(env_steps_done(r), study.env_step_budget) for r in runs)
            bar.update(task, completed=done, info=", ".join(f"{r.variant}/{r.seed}" for r in live))
    report = write_report(out, study, [r for r in runs if r.finished], extra)
    console.print(report)
    return 1 if failed else 0
