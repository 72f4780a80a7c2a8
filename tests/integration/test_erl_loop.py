"""The whole ERL loop on CPU at toy size: runs, logs, checkpoints, and resumes exactly."""

import pytest
from tiny_run import metrics
from tiny_run import overrides as tiny_overrides

from erl_mega.cli import load_config, main
from erl_mega.run import train

pytestmark = pytest.mark.slow


def overrides(tmp, out, **extra):
    return tiny_overrides(tmp / "cache", out, **extra)


@pytest.fixture(scope="module")
def tmp(tmp_path_factory):
    return tmp_path_factory.mktemp("erl")


def test_two_step_erl_run(tmp):
    out = tmp / "straight"
    results = train(load_config(overrides(tmp, out, steps=2, checkpoint_every=1)))
    rows = metrics(out)
    assert [r["step"] for r in rows] == [1, 2]
    for r in rows:
        assert 0 <= r["attempt1_success"] <= 1 and r["rows"] > 0
        assert r["logprob_gap_mean"] < 1e-4  # engine and trainer hold the same fp32 weights
        assert r["time_train"] > 0 and r["sync_bytes"] > 0
    assert set(results) == {"base", "trained"}
    assert (out / "latest").read_text() == "step_000002"
    assert (out / "samples.md").read_text().startswith("## episode 1")
    assert any((out / "tensorboard").iterdir())


def test_resume_gives_the_same_next_step(tmp):
    straight = metrics(tmp / "straight")
    out = tmp / "resumed"
    train(load_config(overrides(tmp, out, steps=1, checkpoint_every=1)))
    train(load_config(overrides(tmp, out, steps=2, checkpoint_every=1, resume="true")))
    resumed = metrics(out)
    assert [r["step"] for r in resumed] == [1, 2]
    timing = {k for k in straight[1] if k.startswith(("time_", "mem_")) or k.endswith("_per_s") or k == "sync_seconds"}
    for key in set(straight[1]) - timing:
        assert resumed[1][key] == pytest.approx(straight[1][key], rel=1e-6, abs=1e-9), key


def test_grpo_baseline_runs_attempt1_only(tmp):
    out = tmp / "grpo"
    train(load_config(overrides(tmp, out, steps=1, checkpoint_every=0, **{"algo": "grpo"})))
    (row,) = metrics(out)
    assert "attempt2_success" not in row and row["distill_rows"] == 0


def test_bad_config_is_one_clear_line(capsys):
    assert main(["train", "env.name=nolake"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "env.name='nolake'" in err
    assert main(["train", "trainer.lr=-1"]) == 2
    assert "trainer.lr=-1" in capsys.readouterr().err


def test_export_writes_the_checkpoint_as_loadable_hf(tmp):
    import torch
    from megatron.core import dist_checkpointing
    from transformers import AutoModelForCausalLM

    from erl_mega.model.hf_io import load_hf_state

    out = tmp / "straight"  # trained for 2 steps above, checkpointed every step
    assert main(["export", *overrides(tmp, out)]) == 0
    exported = load_hf_state(out / "hf")
    # the checkpoint is megatron's distributed format: megatron names, layers stacked on dim 0
    saved = dist_checkpointing.load_plain_tensors(str(out / "step_000002" / "trainer"))
    pairs = {
        "model.embed_tokens.weight": saved["embedding.word_embeddings.weight"],
        "model.norm.weight": saved["decoder.final_layernorm.weight"],
    }
    pairs |= {f"model.layers.{i}.mlp.down_proj.weight": t for i, t in enumerate(saved["decoder.layers.mlp.linear_fc2.weight"])}
    for name, tensor in pairs.items():
        assert torch.equal(exported[name], tensor), name
    logits = AutoModelForCausalLM.from_pretrained(out / "hf")(torch.tensor([[1, 2, 3]])).logits
    assert torch.isfinite(logits).all()


def test_export_without_checkpoint_is_one_clear_line(tmp, capsys):
    assert main(["export", *overrides(tmp, tmp / "never-trained")]) == 2
    assert "holds no checkpoint" in capsys.readouterr().err
