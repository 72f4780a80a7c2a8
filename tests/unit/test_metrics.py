"""metrics.jsonl survives a kill mid-write: a torn last line is dropped and said, never fatal."""

from __future__ import annotations

import json

import pytest

from erl_mega.metrics import MetricsLog, read_metrics


def _log(tmp_path, steps: int) -> list[str]:
    lines = [json.dumps({"step": s, "loss": s / 10}) for s in range(1, steps + 1)]
    (tmp_path / "metrics.jsonl").write_text("".join(l + "\n" for l in lines))
    return lines


def test_a_torn_last_line_is_dropped_and_said(tmp_path, capsys):
    lines = _log(tmp_path, 3)
    with (tmp_path / "metrics.jsonl").open("a") as f:
        f.write('{"step": 4, "lo')  # the process died inside write()
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [1, 2, 3]
    assert "torn last line" in capsys.readouterr().err
    log = MetricsLog(tmp_path, resume_step=2)  # resume: keeps steps <= 2, byte for byte
    log.close()
    assert (tmp_path / "metrics.jsonl").read_text() == "".join(l + "\n" for l in lines[:2])


def test_damage_before_the_last_line_is_an_error_naming_it(tmp_path):
    lines = _log(tmp_path, 3)
    lines[1] = "garbage"
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match="line 2 is not a metrics record"):
        read_metrics(tmp_path / "metrics.jsonl")


def test_help_exits_zero(capsys):
    from erl_mega.cli import main

    assert main(["--help"]) == 0 and "usage: erl-mega" in capsys.readouterr().out
