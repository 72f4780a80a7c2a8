"""`erl-mega study` end to end at a tiny budget: real `erl-mega train` processes, the report, and a rerun that
skips finished runs."""

import json

import pytest

from erl_mega.cli import main

pytestmark = pytest.mark.slow

TINY = ["model.tiny.hidden_size=64", "model.tiny.num_layers=2", "model.tiny.intermediate_size=128",
        "model.tiny.vocab_size=400", "model.warmup.episodes=48", "model.warmup.epochs=1", "tasks_per_step=2",
        "algo.n_rollouts=2"]


def test_study_runs_every_variant_and_seed_at_the_budget_then_skips_them(tmp_path, capsys):
    out = tmp_path / "study"
    args = ["study", f"study.out={out}", "study.variants=[erl,grpo]", "study.seeds=2", "study.env_step_budget=12",
            "study.eval_every=1", "study.eval_tasks=2", "study.eval_seed_start=777", "study.parallel=2",
            f"model.cache_dir={tmp_path / 'cache'}", *TINY]
    assert main(args) == 0
    report = json.loads((out / "study.json").read_text())
    assert sorted((r["variant"], r["seed"]) for r in report["runs"]) == [("erl", 0), ("erl", 1), ("grpo", 0), ("grpo", 1)]
    for r in report["runs"]:
        assert r["env_steps"] >= 12 and r["optimizer_steps"] >= 1
        assert len(r["curve"]) >= 3  # base, each step's held-out evaluation, the final one
        config = (out / r["variant"] / f"seed{r['seed']}" / "config.yaml").read_text()
        assert "eval_seed_start: 777" in config and f"seed: {r['seed']}" in config
    md = (out / "study.md").read_text()
    assert "| erl | 2 |" in md and "| grpo | 2 |" in md and "## Per seed" in md
    assert (out / "study.png").stat().st_size > 1000
    capsys.readouterr()
    assert main(args) == 0  # everything finished: nothing runs again
    assert "4 runs (4 finished)" in capsys.readouterr().out


def test_bad_study_key_is_one_line(capsys):
    assert main(["study", "study.variants=[erl,nope]"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "study.variants" in err
