"""What each spawned rank runs (importable by the spawn start method); results go to files for the test."""

from __future__ import annotations

from pathlib import Path

import torch
from harness import LOSS, make_batch, trainer_config
from megatron.core import parallel_state

from erl_mega.train.dist import reset_parallel
from erl_mega.train.megatron_model import gpt_logits
from erl_mega.train.megatron_trainer import MegatronTrainer


def one_step(trainer: MegatronTrainer) -> dict:
    """Log-probs and full logits before, metrics of one step, and every HF weight after it."""
    batch = make_batch()
    logp = trainer.logprobs(batch.input_ids, batch.targets)
    logits = gpt_logits(trainer.model[0], batch.input_ids) if trainer.layout.pp == 1 else None
    metrics = trainer.step(batch)
    return {"logp": logp, "logits": logits, "metrics": metrics, "hf": trainer.hf_state()}


def layouts(rank: int, out: Path, cases: list[tuple[str, Path, int, int, int]]) -> None:
    """One step per case (name, checkpoint, tp, pp, vpp) in turn, in one process group; `<out>/<name>.pt`.

    The last stage's TP/DP rank 0 writes.
    """
    for name, hf_path, tp, pp, vpp in cases:
        result = one_step(MegatronTrainer(hf_path, trainer_config(tp, pp, vpp=vpp), LOSS))
        if is_reporting_rank():
            torch.save(result, out / f"{name}.pt")
        reset_parallel()


def convert_round_trip(rank: int, hf_paths: list[Path], out: Path) -> None:
    """HF -> this rank's TP=2 x PP=2 shard -> streamed HF buckets, per checkpoint; rank 0 writes what came back."""
    from erl_mega.model.hf_io import load_hf_config, load_hf_state
    from erl_mega.train.convert import iter_hf_buckets, load_hf_weights
    from erl_mega.train.dist import init_parallel
    from erl_mega.train.megatron_model import build_gpt_model

    init_parallel(tp=2, pp=2)
    for path in hf_paths:
        config = load_hf_config(path)
        model = build_gpt_model(
            config,
            pre_process=parallel_state.is_pipeline_first_stage(),
            post_process=parallel_state.is_pipeline_last_stage(),
        )
        load_hf_weights(model, load_hf_state(path), config)
        streamed = [[(name, t.clone()) for name, t in bucket] for bucket in iter_hf_buckets(model, config, 20_000)]
        if rank == 0:
            torch.save(streamed, out / f"{path.name}.pt")


def is_reporting_rank() -> bool:
    """The rank whose results stand for the layout: last pipeline stage, TP and DP rank 0."""
    return (
        parallel_state.is_pipeline_last_stage()
        and parallel_state.get_tensor_model_parallel_rank() == 0
        and parallel_state.get_data_parallel_rank() == 0
    )


def save_midway(rank: int, hf_path: Path, out: Path, layouts: dict[str, tuple[int, int, int]]) -> None:
    """Per named (tp, pp, vpp): a step, a checkpoint `<out>/<name>/trainer`, then the uninterrupted run's second step.

    Last, DP=2 resumes the first layout's checkpoint and takes that second step (`<out>/dp2_resumed.pt`).
    """
    for name, (tp, pp, vpp) in layouts.items():
        trainer = MegatronTrainer(hf_path, trainer_config(tp, pp, vpp=vpp), LOSS)
        trainer.step(make_batch())
        trainer.save(out / name / "trainer.pt")
        trainer.step(make_batch(seed=1))
        hf = trainer.hf_state()
        if is_reporting_rank():
            torch.save(hf, out / f"{name}.pt")
        reset_parallel()
    trainer = MegatronTrainer(hf_path, trainer_config(), LOSS)
    trainer.load(out / next(iter(layouts)) / "trainer.pt")
    trainer.step(make_batch(seed=1))
    hf = trainer.hf_state()
    if rank == 0:
        torch.save(hf, out / "dp2_resumed.pt")
