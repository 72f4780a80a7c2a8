"""The `erl-mega` command: `train`, `eval` and `export`, each taking hydra overrides (`key=value`, `group=option`)."""

from __future__ import annotations

import dataclasses
import sys
import typing
import warnings

from erl_mega.config import preflight, run_record
from erl_mega.config.compose import compose_raw, group_options
from erl_mega.config.rules import rule_of
from erl_mega.config.schema import RunConfig, build

USAGE = ("usage: erl-mega {train,eval,export,plan,serve,study} [--cfg job] [overrides, e.g. algo=grpo steps=10 rollout.temperature=0.8]\n"
         "       erl-mega train --help   lists the config groups, their options and every key")


def load_config(overrides: list[str]) -> RunConfig:
    """Compose the configs with `overrides` and validate them into a RunConfig (ValueError, one line, if bad)."""
    try:
        raw = compose_raw(RunConfig, overrides)
    except ValueError:
        raise
    except Exception as err:  # hydra's messages span lines: keep the verdict and its reason on one
        lines = [l.strip() for l in str(err).strip().splitlines() if l.strip() and not l.startswith("To append")]
        raise ValueError(" ".join(lines).split(" Config search path")[0][:300]) from None
    return build(RunConfig, raw)


def config_help() -> str:
    """`erl-mega train --help`: the config groups with their options, then every key with its default and range."""
    lines = [USAGE, "", "config groups (group=option):"]
    sections = {f.name for f in dataclasses.fields(RunConfig)}  # `study/` is `erl-mega study`'s, not a run's
    lines += [f"  {group}: {', '.join(options)}" for group, options in group_options().items() if group in sections]
    lines += ["", "keys (key=value; defaults of the default run):"]
    try:
        defaults = _flat(dataclasses.asdict(load_config([])))
    except ValueError:
        defaults = {}
    for path, rule in _rules(RunConfig):
        lines.append(f"  {path}={defaults.get(path, '')!r}  allowed: {rule.__doc__ if callable(rule) else rule}")
    lines += ["", "erl-mega train --cfg job [overrides]  prints the resolved config without running"]
    return "\n".join(lines)


def _rules(cls: type, prefix: str = "") -> list[tuple[str, object]]:
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        nested = next((c for c in (typing.get_args(hints[f.name]) or (hints[f.name],)) if dataclasses.is_dataclass(c)), None)
        out += _rules(nested, f"{prefix}{f.name}.") if nested else [(prefix + f.name, rule_of(f))]
    return out


def _flat(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        flat |= _flat(value, f"{prefix}{key}.") if isinstance(value, dict) and value else {prefix + key: value}
    return flat


# Expected on a machine without TransformerEngine/Apex, or from megatron-core 0.16 on a newer torch;
# each is explained in the README, so the command does not repeat them on every start.
KNOWN_WARNINGS = (
    ".*(Transformer Engine|Apex) (and Apex )?(is|are) not installed.*",
    ".*full scope is deprecated.*",
    ".*tp_group is None.*",
    ".*MLP requires ffn_hidden_size.*",
    ".*is deprecated. Please use `torch.distributed.*",
    ".*The .grad attribute of a Tensor that is not a leaf Tensor is being accessed.*",  # cpu_compat's type checks
)


def main(argv: list[str] | None = None) -> int:
    for pattern in KNOWN_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    if args and args[0] == "plan":  # its own inputs (model, cluster, workload, placement), not a run's config
        from erl_mega.plan.command import plan_main

        return plan_main(args[1:])
    if args and args[0] == "study":  # many `train` runs: study.* keys for itself, the rest for every run
        from erl_mega.study import study_main

        return study_main(args[1:])
    if args and args[0] == "serve":  # a rollout server process: its own small key=value config
        from erl_mega.rollout.server.serve import main as serve

        return serve(args[1:])
    if not args or args[0] not in ("train", "eval", "export"):
        print(USAGE, file=sys.stderr)
        return 2
    if any(a in ("-h", "--help") for a in args[1:]):
        print(config_help())
        return 0
    print_only = args[1:3] == ["--cfg", "job"]
    try:
        cfg = load_config(args[3:] if print_only else args[1:])
    except ValueError as err:
        print(f"erl-mega: config error: {err}", file=sys.stderr)
        return 2
    if print_only:
        print(run_record.as_yaml(cfg), end="")
        return 0
    found = preflight.problems(cfg)
    for problem in found:
        print(f"erl-mega: config error: {problem}", file=sys.stderr)
    if found:
        return 2
    if args[0] == "train":
        from erl_mega.run import train
        from erl_mega.run_dir import RunDirError
        from erl_mega.train.checkpoint import CheckpointError

        try:
            train(cfg)
        except (RunDirError, CheckpointError) as err:
            print(f"erl-mega: {err}", file=sys.stderr)
            return 2
    elif args[0] == "eval":
        from erl_mega.run import evaluate_policy

        evaluate_policy(cfg)
    else:
        from erl_mega.export import export_hf

        from erl_mega.train.checkpoint import CheckpointError

        try:
            export_hf(cfg)
        except (ValueError, CheckpointError) as err:
            print(f"erl-mega: {err}", file=sys.stderr)
            return 2
    return 0
