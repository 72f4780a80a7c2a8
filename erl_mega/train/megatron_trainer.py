"""The embedded trainer: a megatron-core GPTModel built from an HF checkpoint, ERL losses, AdamW."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch
from torch import Tensor

from erl_mega.algo.losses import PolicyLossConfig, distill_loss, policy_loss, token_entropy, token_logprobs
from erl_mega.model.hf_io import load_hf_config, load_hf_state
from erl_mega.rollout.engine import NamedTensors
from erl_mega.train.batch import TrainBatch
from erl_mega.train.convert import hf_to_megatron, iter_hf_buckets, megatron_to_hf
from erl_mega.train.dist import init_parallel
from erl_mega.train.megatron_model import build_gpt_model, gpt_logits
from erl_mega.train.trainer import TrainerConfig


@dataclass(frozen=True)
class LossConfig:
    """The policy loss, the distillation term's weight and aggregation, and the log-prob temperature."""

    policy: PolicyLossConfig = PolicyLossConfig()
    distill_coef: float = 1.0
    distill_aggregation: str = "token-mean"
    temperature: float = 1.0  # must equal the rollout temperature, so ratios compare like with like


class MegatronTrainer:
    """Trains the policy on TrainBatches; `version` counts optimizer steps (the weight version)."""

    def __init__(self, hf_path: str | Path, optim: TrainerConfig, loss: LossConfig, seed: int = 0) -> None:
        init_parallel(tp=1, pp=1, seed=seed)
        self.hf_config = load_hf_config(hf_path)
        self.optim_cfg, self.loss_cfg = optim, loss
        self.model = build_gpt_model(self.hf_config)
        self.model.load_state_dict(hf_to_megatron(load_hf_state(hf_path), self.hf_config), strict=True)
        self.reference = None
        if loss.policy.kl_coef > 0:
            self.reference = build_gpt_model(self.hf_config)  # a deepcopy would copy process groups
            self.reference.load_state_dict(self.model.state_dict())
            self.reference.eval().requires_grad_(False)
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=optim.lr, betas=(optim.beta1, optim.beta2), weight_decay=optim.weight_decay)
        self.version = 0

    def step(self, batch: TrainBatch) -> dict[str, float]:
        """One optimizer step over the whole batch, accumulated over micro-batches (exact global means)."""
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        agg = self.loss_cfg.policy.aggregation
        policy_mask = batch.loss_mask * (~batch.is_distill)[:, None]
        distill_mask = batch.loss_mask * batch.is_distill[:, None]
        policy_units = _units(policy_mask, agg)
        distill_units = _units(distill_mask, self.loss_cfg.distill_aggregation)
        sums: dict[str, float] = {}
        gaps: list[Tensor] = []
        mbs = self.optim_cfg.micro_batch_size
        for start in range(0, batch.num_rows, mbs):
            mb = batch.select(slice(start, start + mbs))
            pmask, dmask = policy_mask[start : start + mbs], distill_mask[start : start + mbs]
            logits = gpt_logits(self.model, mb.input_ids)
            logp = token_logprobs(logits, mb.targets, self.loss_cfg.temperature)
            total = logp.new_zeros(())
            if pmask.sum() > 0:
                with torch.no_grad():
                    entropy = token_entropy(logits.detach(), self.loss_cfg.temperature)
                    ref = self._reference_logprobs(mb) if self.reference is not None else None
                share = _units(pmask, agg) / policy_units
                loss, metrics = policy_loss(
                    logp, logp.detach(), mb.advantages, pmask, self.loss_cfg.policy, ref, entropy, mb.rollout_logprobs
                )
                total = total + share * loss
                for key, value in metrics.items():
                    sums[key] = sums.get(key, 0.0) + share * float(value)
                gaps.append((logp.detach() - mb.rollout_logprobs).abs()[pmask > 0])
            if dmask.sum() > 0:
                share = _units(dmask, self.loss_cfg.distill_aggregation) / distill_units
                d = distill_loss(logp, dmask, mb.distill_weight, self.loss_cfg.distill_aggregation)
                total = total + self.loss_cfg.distill_coef * share * d
                sums["distill_loss"] = sums.get("distill_loss", 0.0) + share * float(d.detach())
            if total.requires_grad:
                total.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.optim_cfg.grad_clip)
        self.optimizer.step()
        self.version += 1
        out = {k: float(v) for k, v in sums.items()} | {"grad_norm": float(grad_norm)}
        if gaps:
            gap = torch.cat(gaps)
            out |= {"logprob_gap_mean": float(gap.mean()), "logprob_gap_max": float(gap.max())}
        return out

    @torch.no_grad()
    def logprobs(self, input_ids: Tensor, targets: Tensor) -> Tensor:
        """The current policy's log-prob of each target token [B, T] (evaluation and tests)."""
        self.model.eval()
        return token_logprobs(gpt_logits(self.model, input_ids), targets, self.loss_cfg.temperature)

    @torch.no_grad()
    def _reference_logprobs(self, mb: TrainBatch) -> Tensor:
        return token_logprobs(gpt_logits(self.reference, mb.input_ids), mb.targets, self.loss_cfg.temperature)

    def named_parameters_hf(self) -> Iterator[NamedTensors]:
        """The policy as HF-named full tensors, in buckets of at most `bucket_mb` MiB."""
        return iter_hf_buckets(self.model, self.hf_config, self.optim_cfg.bucket_mb << 20)

    def hf_state(self) -> dict[str, Tensor]:
        """The policy as one HF state dict (export)."""
        return megatron_to_hf(self.model.state_dict(), self.hf_config)

    def state_dict(self) -> dict:
        """Everything needed to resume training exactly."""
        return {
            "model": self.model.state_dict(),
            "reference": None if self.reference is None else self.reference.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "version": self.version,
        }

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"], strict=True)
        if self.reference is not None and state["reference"] is not None:
            self.reference.load_state_dict(state["reference"], strict=True)
        self.optimizer.load_state_dict(state["optimizer"])
        self.version = state["version"]

    def save(self, path: Path) -> None:
        torch.save(self.state_dict(), path)

    def load(self, path: Path) -> None:
        self.load_state_dict(torch.load(path, weights_only=False))


def _units(mask: Tensor, aggregation: str) -> float:
    """How many units a mask holds for an aggregation (tokens, or rows with any token)."""
    if aggregation == "token-mean":
        return float(mask.sum())
    return float((mask.sum(-1) > 0).sum())
