"""Vocab-parallel lm-head kernels on 2 gloo ranks equal the unsharded fp64 reference.

Each rank holds half of the weight's rows; log-probs, entropy, the loss and d(hidden) must equal the
unsharded ones on every rank, and d(weight) must be that rank's slice of the unsharded gradient.
The ranks are spawned processes on CPU, so the Triton kernels run in the interpreter there.
"""

from __future__ import annotations

import datetime
import os

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from erl_mega.kernels.losses import PolicyLossConfig

WORLD = 2
TOKENS, WIDTH, VOCAB = 13, 16, 2 * 97
CU_SEQLENS = torch.tensor([0, 4, 5, 13])
CFG = PolicyLossConfig(entropy_coef=0.01, tis_cap=2.0, kl_kind="k3", kl_coef=0.05, aggregation="seq-mean-token-mean")


def _data() -> dict[str, torch.Tensor]:
    """The same fp32 batch on every rank (fixed seed); old log-probs near the current ones."""
    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(TOKENS, WIDTH, generator=gen)
    weight = torch.randn(VOCAB, WIDTH, generator=gen) * (3.0 / WIDTH**0.5)
    targets = torch.randint(0, VOCAB, (TOKENS,), generator=gen)
    targets[:2] = torch.tensor([VOCAB // 2 - 1, VOCAB // 2])  # both sides of the shard boundary
    logp = torch.log_softmax((hidden @ weight.t()).double(), -1).gather(-1, targets[:, None]).squeeze(-1).float()
    noise = lambda: 0.3 * torch.randn(TOKENS, generator=gen)  # noqa: E731
    return {
        "hidden": hidden,
        "weight": weight,
        "targets": targets,
        "old_logp": logp + noise(),
        "advantages": torch.randn(TOKENS, generator=gen),
        "mask": (torch.rand(TOKENS, generator=gen) > 0.2).float(),
        "ref_logp": logp + noise(),
        "rollout_logp": logp + noise(),
    }


def _grads(fn, hidden: torch.Tensor, weight: torch.Tensor):
    h, w = hidden.detach().clone().requires_grad_(), weight.detach().clone().requires_grad_()
    out = fn(h, w)
    (out if isinstance(out, torch.Tensor) else out.loss).backward()
    return out, h.grad, w.grad


def _close(actual: torch.Tensor, expected: torch.Tensor, tol: float = 2e-4) -> None:
    torch.testing.assert_close(actual.double(), expected.double(), atol=tol, rtol=tol)


def _worker(rank: int, init_file: str) -> None:
    os.environ.setdefault("TRITON_INTERPRET", "1")  # set before the kernels are imported below
    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD, timeout=datetime.timedelta(seconds=120)
    )
    try:
        import erl_mega.kernels.online_softmax
        from erl_mega.kernels.fused_linear_logprob import fused_policy_loss_triton, fused_token_logprobs_triton
        from erl_mega.kernels.packed_distill_loss import packed_distill_loss_triton
        from erl_mega.kernels.reference import fused_policy_loss_reference, packed_distill_loss_reference

        erl_mega.kernels.online_softmax.BLOCK_V = 32  # each 97-row shard spans several vocab blocks
        d = _data()
        rows = slice(rank * VOCAB // WORLD, (rank + 1) * VOCAB // WORLD)
        tokens = {k: d[k] for k in ("targets", "old_logp", "advantages", "mask", "ref_logp", "rollout_logp")}
        policy = dict(tokens, cfg=CFG, cu_seqlens=CU_SEQLENS, temperature=0.8)
        ref, ref_dh, ref_dw = _grads(
            lambda h, w: fused_policy_loss_reference(h, w, **policy), d["hidden"].double(), d["weight"].double()
        )
        group = dist.group.WORLD
        shard = d["weight"][rows]
        for fn in (
            lambda h, w: fused_policy_loss_triton(h, w, **policy, group=group, chunk_rows=5),
            lambda h, w: fused_policy_loss_reference(h, w, **policy, group=group),
        ):
            out, dh, dw = _grads(fn, d["hidden"], shard)
            _close(out.loss, ref.loss)
            _close(out.logp, ref.logp)
            _close(out.entropy, ref.entropy)
            for key, value in ref.metrics.items():
                _close(out.metrics[key], value)
            _close(dh, ref_dh)
            _close(dw, ref_dw[rows])

        logp, entropy = fused_token_logprobs_triton(d["hidden"], shard, d["targets"], temperature=0.8, group=group)
        _close(logp, ref.logp)
        _close(entropy, ref.entropy)

        distill = dict(
            targets=d["targets"], mask=d["mask"], cu_seqlens=CU_SEQLENS, seq_weights=torch.tensor([1.0, 2.0, 0.5])
        )
        ref_loss, ref_dh, ref_dw = _grads(
            lambda h, w: packed_distill_loss_reference(h, w, **distill), d["hidden"].double(), d["weight"].double()
        )
        loss, dh, dw = _grads(lambda h, w: packed_distill_loss_triton(h, w, **distill, group=group), d["hidden"], shard)
        _close(loss, ref_loss)
        _close(dh, ref_dh)
        _close(dw, ref_dw[rows])
    finally:
        dist.destroy_process_group()


def test_two_vocab_shards_equal_the_unsharded_reference(tmp_path):
    mp.spawn(_worker, args=(str(tmp_path / "store"),), nprocs=WORLD, join=True)
