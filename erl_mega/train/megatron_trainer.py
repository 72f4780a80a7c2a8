"""The megatron-core trainer: a GPTModel built from an HF checkpoint, split TP × PP × DP, ERL losses.

Parallelism is applied from outside the model: megatron's parallel state and layer specs shard
it, its DDP wrapper owns the gradient buffers, its (distributed) optimizer steps it, and its
pipeline schedule (1F1B, interleaved over `trainer.vpp` model chunks per pipeline rank) runs forward
and backward over the micro-batches of this DP rank.
The frozen reference policy (KL term) stays in host memory on CUDA, on the GPU only for its forward.
"""

from __future__ import annotations

from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Iterator

import torch
import torch.distributed as dist
from megatron.core import parallel_state
from megatron.core.distributed import (
    DistributedDataParallel,
    DistributedDataParallelConfig,
    finalize_model_grads,
)
from megatron.core.models.gpt import GPTModel
from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
from megatron.core.pipeline_parallel import get_forward_backward_func
from megatron.core.process_groups_config import ProcessGroupCollection
from torch import Tensor

from erl_mega.model.hf_io import load_hf_config, load_hf_state
from erl_mega.weights.buckets import NamedTensors
from erl_mega.train.batch import TrainBatch
from erl_mega.train.convert import iter_hf_buckets, load_hf_weights
from erl_mega.train.cpu_compat import on_host
from erl_mega.train.dist import init_parallel, world_size
from erl_mega.train.dist_checkpoint import (
    init_adam_state,
    load_trainer_state,
    save_trainer_state,
)
from erl_mega.train.layout import ParallelLayout, parallel_layout
from erl_mega.train.loss import LossConfig, LossReport, loss_token_logprobs, micro_batch_loss
from erl_mega.train.megatron_model import (
    build_gpt_model,
    gpt_hidden_states,
    output_weight,
)
from erl_mega.train.micro_batches import (
    ModelInputs,
    StepLogprobs,
    mini_batch_rows,
    packed_micro_batches,
    padded_micro_batches,
    select_rows,
)
from erl_mega.train.pipeline_p2p import OrderedShapesP2P
from erl_mega.train.trainer import TrainerConfig

__all__ = ["LossConfig", "MegatronTrainer"]


class MegatronTrainer:
    """Trains the policy on TrainBatches; `version` counts training steps (the weight version engines get).

    Every rank of the job constructs it and calls `step`, `named_parameters_hf` and `save` together.
    """

    def __init__(
        self, hf_path: str | Path, optim: TrainerConfig, loss: LossConfig, seed: int = 0,
        params_dtype: torch.dtype = torch.float32,
    ) -> None:
        self.hf_config = load_hf_config(hf_path)
        self.layout: ParallelLayout = parallel_layout(world_size(), optim.tp, optim.pp, self.hf_config, optim.vpp)
        init_parallel(tp=optim.tp, pp=optim.pp, seed=seed, vpp=optim.vpp)
        self.optim_cfg, self.loss_cfg, self.params_dtype, self.seed = optim, loss, params_dtype, seed
        hf_state = load_hf_state(hf_path)
        self.model = self._build(hf_state)  # one GPTModel per virtual stage of this pipeline rank
        self.reference = None
        if loss.policy.kl_coef > 0:
            self.reference = _offload(self._build(hf_state).eval().requires_grad_(False))
        config = self.model[0].config  # the schedule reads the first chunk's config
        ddp_config = DistributedDataParallelConfig(grad_reduce_in_fp32=True, use_distributed_optimizer=True)
        # As megatron's own training loop: only the first chunk's gradients go in buckets.
        self.ddp = [
            DistributedDataParallel(chunk.config, ddp_config, chunk, disable_bucketing=i > 0)
            for i, chunk in enumerate(self.model)
        ]
        config.finalize_model_grads_func = finalize_model_grads
        no_sync = [ddp.no_sync for ddp in self.ddp]  # the interleaved schedule takes one per chunk
        config.no_sync_func = no_sync if len(no_sync) > 1 else no_sync[0]
        self.optimizer = get_megatron_optimizer(
            OptimizerConfig(
                optimizer="adam", lr=optim.lr, weight_decay=optim.weight_decay, adam_beta1=optim.beta1,
                adam_beta2=optim.beta2, clip_grad=optim.grad_clip, params_dtype=config.params_dtype,
                bf16=config.bf16, use_distributed_optimizer=True,
            ),
            self.ddp,
        )
        init_adam_state(self.optimizer)
        self.version = 0

    def _build(self, hf_state: dict[str, Tensor]) -> torch.nn.ModuleList:
        """This pipeline rank's model chunks, one per virtual stage, loaded from the HF state."""
        vpp = self.layout.vpp
        chunks = torch.nn.ModuleList()
        for vp_stage in range(vpp) if vpp > 1 else [None]:
            chunk = build_gpt_model(
                self.hf_config,
                self.params_dtype,
                pre_process=parallel_state.is_pipeline_first_stage(ignore_virtual=False, vp_stage=vp_stage),
                post_process=parallel_state.is_pipeline_last_stage(ignore_virtual=False, vp_stage=vp_stage),
                vp_stage=vp_stage,
            )
            load_hf_weights(chunk, hf_state, self.hf_config)
            # Micro-batches differ in length: pipeline stages exchange shapes first. Set after
            # construction: TransformerConfig's check rejects it for its (unused here) MoE dispatcher.
            chunk.config.variable_seq_lengths = True
            chunks.append(chunk)
        return chunks

    def _micro_batches(self, batch: TrainBatch, logprobs: StepLogprobs = StepLogprobs()) -> list[ModelInputs]:
        rank, size = parallel_state.get_data_parallel_rank(), self.layout.dp
        aggs = self.loss_cfg.aggregations
        if self.optim_cfg.packing:
            return packed_micro_batches(batch, self.optim_cfg.max_tokens_per_micro_batch, rank, size, aggs, logprobs)
        return padded_micro_batches(batch, self.optim_cfg.micro_batch_size, rank, size, aggs, logprobs)

    def _scheduled(self, count: int) -> int:
        """Micro-batches the schedule runs for `count`: the interleaved one runs groups of `pp`."""
        pp = self.layout.pp
        return -(-count // pp) * pp if self.layout.vpp > 1 else count

    def _run(self, chunks: list, mbs: list[ModelInputs], loss_func, forward_only: bool) -> list:
        """megatron's schedule over `mbs`: `loss_func(mb, index, hidden)` on the last stage; its reports.

        Each micro-batch moves from the host to the model's device as the schedule reaches it. Under
        virtual stages the list is padded to a multiple of `pp` (megatron's group of micro-batches
        per virtual stage) with copies of its last micro-batch whose loss counts zero and whose
        reports are dropped.
        """
        count, total = len(mbs), self._scheduled(len(mbs))
        mbs = mbs + mbs[-1:] * (total - count)

        def forward_step(data_iterator, module):
            index, mb = next(data_iterator)
            model = _unwrap(module)
            mb = mb.to(next(model.parameters()).device)
            hidden = gpt_hidden_states(model, mb.input_ids, mb.position_ids, mb.packed_seq_params)
            if index >= count:
                return hidden, partial(_zero_loss, partial(loss_func, mb, count - 1))
            return hidden, partial(loss_func, mb, index)

        config = _unwrap(chunks[0]).config
        outputs = get_forward_backward_func()(
            forward_step_func=forward_step, data_iterator=[iter(enumerate(mbs)) for _ in chunks], model=list(chunks),
            num_microbatches=total, seq_length=mbs[0].input_ids.shape[1],
            micro_batch_size=mbs[0].input_ids.shape[0], forward_only=forward_only,
            p2p_communicator=OrderedShapesP2P(parallel_state.get_pipeline_model_parallel_group(), config),
            pg_collection=ProcessGroupCollection.use_mpu_process_groups(),
        )
        return outputs[:count]

    def step(self, batch: TrainBatch) -> dict[str, float]:
        """PPO on one batch: `ppo_epochs` passes, one optimizer step per mini-batch; metrics averaged over steps.

        The old and reference log-probs are computed once, before any update. With a single update the
        old policy is the current one (ratio 1) and no extra pass runs.
        """
        cfg = self.optim_cfg
        logprobs = self._step_logprobs(batch)
        updates = []
        for epoch in range(cfg.ppo_epochs):
            for rows in mini_batch_rows(batch.num_rows, cfg.ppo_mini_batch_size, self.seed, self.version, epoch):
                whole = len(rows) == batch.num_rows
                updates.append(self._update(batch if whole else select_rows(batch, rows), logprobs.rows(rows)))
        self.version += 1
        return _mean(updates) | {"ppo_updates": float(len(updates))}

    def _update(self, batch: TrainBatch, logprobs: StepLogprobs) -> dict[str, float]:
        """One optimizer step over a mini-batch, accumulated over micro-batches and DP ranks (exact global means)."""
        mbs = self._micro_batches(batch, logprobs)
        self.model.train()
        for ddp in self.ddp:
            ddp.zero_grad_buffer()
        self.optimizer.zero_grad()
        tp_group = parallel_state.get_tensor_model_parallel_group()
        # megatron averages over (scheduled) micro-batches and DP ranks; shares are global
        undo_mean = self._scheduled(len(mbs)) * self.layout.dp

        def loss_func(mb, index, hidden):
            loss, report = micro_batch_loss(hidden, output_weight(self.model[-1]), mb, self.loss_cfg, tp_group)
            return loss * undo_mean, {"report": report}

        reports = self._run(self.ddp, mbs, loss_func, forward_only=False)
        _, grad_norm, _ = self.optimizer.step()
        return _merge([r["report"] for r in reports]) | {"grad_norm": float(grad_norm)}

    def _step_logprobs(self, batch: TrainBatch) -> StepLogprobs:
        """What every update of this step compares against: the old policy's and the reference's log-probs."""
        cfg = self.optim_cfg
        ref = None
        if self.reference is not None:
            with _on_gpu(self.reference):
                ref = self._batch_logprobs(self.reference, self.reference, batch)
        size = cfg.ppo_mini_batch_size or batch.num_rows
        one_update = cfg.ppo_epochs == 1 and size >= batch.num_rows
        if cfg.old_logprobs == "rollout":
            old = batch.rollout_logprobs
            if not bool(batch.behaviour_known.all()):  # re-contextualised rows: the trainer scores them itself
                known = batch.behaviour_known[:, None]
                old = torch.where(known, old, self._batch_logprobs(self.ddp, self.model, batch))
        else:
            old = None if one_update else self._batch_logprobs(self.ddp, self.model, batch)
        return StepLogprobs(old, ref)

    @torch.no_grad()
    def _batch_logprobs(self, chunks, model: torch.nn.ModuleList, batch: TrainBatch) -> Tensor:
        """`model`'s log-prob [B, T] of every loss token of the batch (0 elsewhere), on every rank.

        `chunks` are what the schedule runs (the DDP wrappers of the policy, or the bare reference).
        """
        model.eval()
        mbs = self._micro_batches(batch)
        group = parallel_state.get_tensor_model_parallel_group()

        def loss_func(mb, index, hidden):
            return hidden.new_zeros(()), {"logp": loss_token_logprobs(hidden, output_weight(model[-1]), mb, group)}

        outputs = self._run(chunks, mbs, loss_func, forward_only=True)
        full = torch.zeros(batch.targets.shape, device=next(model.parameters()).device)
        for mb, out in zip(mbs, outputs):
            full[mb.batch_rows.to(full.device), mb.batch_cols.to(full.device)] = out["logp"]
        if self.layout.dp > 1:  # each DP rank scored its own rows
            dist.all_reduce(full, group=parallel_state.get_data_parallel_group())
        return full.cpu()

    @torch.no_grad()
    def logprobs(self, input_ids: Tensor, targets: Tensor, temperatures: Tensor | None = None) -> Tensor | None:
        """The current policy's log-prob of each target [B, T] at each row's temperature [B] (default 1).

        On the last stage; None elsewhere.
        """
        b, t = input_ids.shape
        zeros = torch.zeros(b, t)
        batch = TrainBatch(
            input_ids=input_ids, targets=targets, loss_mask=torch.ones(b, t), advantages=zeros, rollout_logprobs=zeros,
            behaviour_known=torch.ones(b, dtype=torch.bool), distill_weight=torch.zeros(b),
            is_distill=torch.zeros(b, dtype=torch.bool), versions=(0,) * b,
            temperatures=torch.ones(b) if temperatures is None else temperatures, lengths=torch.full((b,), t),
        )
        logp = self._batch_logprobs(self.ddp, self.model, batch)
        return logp if parallel_state.is_pipeline_last_stage() else None

    def named_parameters_hf(self) -> Iterator[NamedTensors]:
        """The policy as HF-named full tensors, in buckets of at most `bucket_mb` MiB (collective)."""
        return iter_hf_buckets(self.model, self.hf_config, self.optim_cfg.bucket_mb << 20)

    def hf_state(self) -> dict[str, Tensor]:
        """The policy as one HF state dict (export; collective)."""
        return {name: t.clone() for bucket in self.named_parameters_hf() for name, t in bucket}

    def save(self, path: Path) -> None:
        """The policy, its optimizer and the version into the directory `path` less its suffix (collective).

        megatron's distributed checkpoint: any TP x PP x DP layout loads it. The reference policy
        is not saved: it is the frozen HF checkpoint every trainer is built from.
        """
        save_trainer_state(path.with_suffix(""), self.model, self.optimizer, self.version)

    def load(self, path: Path) -> None:
        """Restore what `save(path)` wrote, whatever layout wrote it (collective)."""
        self.version = load_trainer_state(path.with_suffix(""), self.model, self.optimizer)


def _offload(model: torch.nn.Module) -> torch.nn.Module:
    """The model moved to host memory when it lives on CUDA (a no-op on the host)."""
    return model if on_host() else model.cpu()


@contextmanager
def _on_gpu(model: torch.nn.Module) -> Iterator[None]:
    """Within: an offloaded model is on the current CUDA device; back in host memory after."""
    if on_host():
        yield
        return
    model.cuda()
    try:
        yield
    finally:
        model.cpu()


def _unwrap(module) -> GPTModel:
    return module.module if isinstance(module, DistributedDataParallel) else module


def _zero_loss(loss_func, hidden: Tensor):
    """`loss_func`'s loss times zero (a padding micro-batch: in the graph, out of the gradient)."""
    loss, report = loss_func(hidden)
    return loss * 0, report


def _mean(updates: list[dict[str, float]]) -> dict[str, float]:
    """Each metric averaged over the updates that report it."""
    keys = dict.fromkeys(key for update in updates for key in update)
    return {key: sum(u[key] for u in updates if key in u) / sum(key in u for u in updates) for key in keys}


def _merge(reports: list[LossReport]) -> dict[str, float]:
    """Sum share-weighted metrics over micro-batches and ranks (one TP rank of the last stage counts)."""
    counts = parallel_state.get_tensor_model_parallel_rank() == 0
    local = reports if counts else []
    gathered: list = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, [(r.sums, r.gaps) for r in local])
    sums: dict[str, float] = {}
    gaps = [torch.zeros(0)]
    for rank_reports in gathered:
        for part, gap in rank_reports:
            for key, value in part.items():
                sums[key] = sums.get(key, 0.0) + value
            gaps.append(gap.cpu())
    gap = torch.cat(gaps)
    if gap.numel():
        sums |= {"logprob_gap_mean": float(gap.mean()), "logprob_gap_max": float(gap.max())}
    return sums
