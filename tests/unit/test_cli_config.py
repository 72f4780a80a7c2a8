"""Every bad setting is one line, exit code 2, before any model is loaded (issue 16's table and every field)."""

import json
import subprocess
import sys
import time

import pytest

import erl_mega.run as run
from erl_mega.cli import _rules, main
from erl_mega.config.schema import RunConfig

TABLE = [  # issue 16's rows
    "algo.success_threshold=2.0", "algo.success_threshold=-1", "algo.success_threshold=nan", "algo.distill_coef=-1",
    "trainer.grad_clip=nan", "eval_tasks=0", "trainer.tp=3", "rollout.temperature=nan", "rollout.top_p=0",
    "rollout.top_p=2", "rollout.max_new_tokens=0", "rollout.max_new_tokens=-1", "rollout.reflect_max_new_tokens=0",
    "rollout.max_batch_size=0", "trainer.beta1=2", "trainer.weight_decay=-1", "algo.memory_capacity=0", "seed=-1",
    "model.tiny.num_layers=0", "env=hotpotqa", "stpes=1",
]
BAD = {">= 1": 0, ">= 0": -1, "> 0": -1.0, "> 1": 0.5, "finite": "nan", "nonempty": "' '", "[0, 1]": 1.5,
       "(0, 1]": 0, "[0, 1)": 1, "(0, 100]": 0, "[0, 2147483647]": -1, "[0, 999999]": 10**6,
       "(0, 1)": 1, "[1, 65535]": 0}
UNBOUNDED = "any"  # booleans, free-form options: every value of the type is allowed


def _field_rows():
    rows = []
    for path, rule in _rules(RunConfig):
        if isinstance(rule, tuple):
            rows.append(f"{path}=no-such-choice")
        elif rule in BAD:
            rows.append(f"{path}={BAD[rule]}")
        elif not callable(rule) and rule != UNBOUNDED:  # callables have their own tests below
            raise AssertionError(f"{path}: rule {rule!r} has no out-of-range value in BAD")
    return rows


@pytest.fixture(autouse=True)
def no_work(monkeypatch):
    def refuse(*_):
        raise AssertionError("training started on a bad config")

    monkeypatch.setattr(run, "train", refuse)
    monkeypatch.setattr(run, "evaluate_policy", refuse)


@pytest.mark.parametrize("override", TABLE + _field_rows())
def test_bad_setting_is_one_line(override, tmp_path, capsys):
    clock = time.thread_time()  # this thread's CPU: threads other tests left running do not count
    code = main(["train", "steps=1", f"out_dir={tmp_path}/run", f"model.cache_dir={tmp_path}/cache", override])
    seconds = time.thread_time() - clock
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    key = override.split("=")[0]
    assert key.split(".")[-1] in err or (key == "env" and "env.name" in err), err
    assert seconds < 2.0  # config checks only: a model load or warm-up takes minutes


@pytest.mark.parametrize("kind", ["missing", "file", "broken-json", "no-weights"])
def test_model_path_not_a_checkpoint(kind, tmp_path, capsys):
    path = tmp_path / "ckpt"
    if kind == "file":
        path.write_text("x")
    elif kind != "missing":
        path.mkdir()
        (path / "config.json").write_text("{broken" if kind == "broken-json" else json.dumps({"model_type": "qwen2"}))
    assert main(["train", f"model.path={path}", f"out_dir={tmp_path}/run"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("erl-mega: config error: model.path=")


@pytest.mark.parametrize("kind", ["file", "under-a-file"])
def test_out_dir_not_writable(kind, tmp_path, capsys):
    blocker = tmp_path / "f"
    blocker.write_text("x")
    out = blocker if kind == "file" else blocker / "run"
    assert main(["train", f"out_dir={out}", f"model.cache_dir={tmp_path}"]) == 2
    assert "out_dir=" in capsys.readouterr().err


def test_too_little_disk_for_a_checkpoint(tmp_path, capsys, monkeypatch):
    from erl_mega.config import preflight

    monkeypatch.setattr(preflight, "CHECKPOINT_BYTES_PER_PARAM", 2**50)
    assert main(["train", f"out_dir={tmp_path}/run", f"model.cache_dir={tmp_path}"]) == 2
    assert "a checkpoint needs about" in capsys.readouterr().err


def test_resume_refuses_a_changed_algorithm_and_allows_more_steps(tmp_path, capsys):
    from erl_mega.cli import load_config
    from erl_mega.config import run_record

    common = [f"out_dir={tmp_path}", f"model.cache_dir={tmp_path}/cache"]
    run_record.write(load_config(common), tmp_path)
    assert run_record.resume_conflicts(load_config(common + ["resume=true", "steps=80"])) is None
    line = run_record.resume_conflicts(load_config(common + ["resume=true", "algo.loss.kl_coef=0.5", "trainer.lr=1e-3"]))
    assert "algo.loss.kl_coef" in line and "trainer.lr" in line and "steps" not in line
    assert main(["train", "resume=true", "trainer.lr=1e-3"] + common) == 2


def test_help_and_printing_the_config(capsys):
    assert main(["--help"]) == 0
    assert main(["train", "--help"]) == 0
    text = capsys.readouterr().out
    assert "algo: erl, grpo" in text and "trainer.lr=0.0005" in text
    assert "  study:" not in text  # erl-mega study's group, not a run's
    assert "allowed: an HF checkpoint directory" in text and "_hf_checkpoint" not in text
    assert main(["train", "--cfg", "job", "trainer.lr=1e-3"]) == 0
    assert "lr: 0.001" in capsys.readouterr().out


def test_serve_names_a_bad_number(capsys):
    assert main(["serve", "model.path=/nowhere", "port=abc"]) == 2
    assert capsys.readouterr().err.splitlines()[0] == "erl-mega serve: port='abc': must be an integer"


def test_real_command_line_reports_one_line():
    proc = subprocess.run([sys.executable, "-m", "erl_mega", "train", "steps=1", "rollout.top_p=2"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        "erl-mega: config error: rollout.top_p=2.0: must be in (0, 1]"]


def test_a_turn_limit_that_leaves_no_held_out_map_is_one_line(capsys):
    assert main(["train", "env.max_turns=2"]) == 2  # every 2x2 FrozenLake map falls in the train split by content
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "max_turns=2" in line and "no test task" in line and "solvable within 2 moves" in line


@pytest.mark.parametrize("override, words", [
    (["rollout=sglang", "rollout.urls=[localhost:30000]"], "must be http(s) URLs of running servers"),
    (["rollout.urls=[http://127.0.0.1:30000]"], "rollout.urls is for rollout.backend=sglang"),
    (["rollout=server", "rollout.transport=ipc"], "rollout.transport='ipc': must be one of"),
])
def test_bad_rollout_server_setting_is_one_line(override, words, capsys):
    assert main(["train", *override]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and words in err
