"""`erl-mega plan [--json] [--plot PATH] key=value ...`: print the ranked layouts for a model on a cluster."""

from __future__ import annotations

import sys
from pathlib import Path

from erl_mega.plan.layouts import plan_all
from erl_mega.plan.report import as_json, plot, print_plan
from erl_mega.plan.shape import load_shape
from erl_mega.plan.spec import plan_config


def plan_main(args: list[str]) -> int:
    flags = {"--json": False, "--plot": None}
    rest = []
    it = iter(args)
    for arg in it:
        if arg == "--json":
            flags["--json"] = True
        elif arg == "--plot":
            flags["--plot"] = next(it, "")
        else:
            rest.append(arg)
    try:
        if flags["--plot"] is not None and (not flags["--plot"] or "=" in flags["--plot"]):
            raise ValueError(f"--plot needs a PATH (e.g. --plot plan.png), got {flags['--plot']!r}")
        cfg = plan_config(rest)
        shape = load_shape(cfg.model)
    except ValueError as err:
        print(f"erl-mega: config error: {err}", file=sys.stderr)
        return 2
    plans = plan_all(shape, cfg)
    if flags["--json"]:
        print(as_json(shape, plans))
    else:
        print_plan(shape, plans, cfg.top)
    if flags["--plot"]:
        plot(plans, Path(flags["--plot"]), cfg.cluster.gpu_memory_gb, cfg.top)
        print(f"wrote {flags['--plot']}", file=sys.stderr)
    return 0
