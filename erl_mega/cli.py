"""The `erl-mega` command: `train`, `eval` and `export`, each taking hydra overrides (`key=value`, `group=option`)."""

from __future__ import annotations

import sys
import warnings

from omegaconf import OmegaConf

from erl_mega.config.schema import RunConfig, build

USAGE = "usage: erl-mega {train,eval,export,plan,serve} [hydra overrides, e.g. algo=grpo steps=10 rollout.temperature=0.8]"


def load_config(overrides: list[str]) -> RunConfig:
    """Compose the hydra configs with `overrides` and validate them into a RunConfig (ValueError if bad)."""
    from hydra import compose, initialize_config_module

    try:
        with initialize_config_module(config_module="erl_mega.configs", version_base=None):
            raw = compose(config_name="config", overrides=overrides)
    except Exception as err:  # hydra's messages span lines: keep the verdict and its reason on one
        lines = [l.strip() for l in str(err).strip().splitlines() if l.strip() and not l.startswith("To append")]
        raise ValueError(" ".join(lines).split(" Config search path")[0][:300]) from None
    return build(RunConfig, OmegaConf.to_container(raw, resolve=True))


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
    if args and args[0] == "serve":  # a rollout server process: its own small key=value config
        from erl_mega.rollout.server.serve import main as serve

        return serve(args[1:])
    if not args or args[0] not in ("train", "eval", "export"):
        print(USAGE, file=sys.stderr)
        return 2
    try:
        cfg = load_config(args[1:])
    except ValueError as err:
        print(f"erl-mega: config error: {err}", file=sys.stderr)
        return 2
    if args[0] == "train":
        from erl_mega.run import train
        from erl_mega.run_dir import RunDirError

        try:
            train(cfg)
        except RunDirError as err:
            print(f"erl-mega: {err}", file=sys.stderr)
            return 2
    elif args[0] == "eval":
        from erl_mega.run import evaluate_policy

        evaluate_policy(cfg)
    else:
        from erl_mega.export import export_hf

        try:
            export_hf(cfg)
        except ValueError as err:
            print(f"erl-mega: {err}", file=sys.stderr)
            return 2
    return 0
