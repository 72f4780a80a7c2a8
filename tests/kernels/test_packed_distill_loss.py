"""Packed-sequence distillation loss (Triton) against the fp64 reference `erl_mega.kernels.losses.distill_loss`."""

from __future__ import annotations

import pytest
import torch

from erl_mega.kernels.dispatch import packed_distill_loss
from erl_mega.kernels.packed_distill_loss import packed_distill_loss_triton
from erl_mega.kernels.reference import packed_distill_loss_reference

GRAD_TOL = {torch.float32: 1e-4, torch.bfloat16: 3e-2}
CU_SEQLENS = torch.tensor([0, 5, 5, 6, 14, 19])  # an empty and a single-token sequence; N = 19


def _batch(tokens: int, width: int, vocab: int, dtype: torch.dtype, device: torch.device, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(tokens, width, generator=gen).to(device, dtype)
    weight = (torch.randn(vocab, width, generator=gen) * (3.0 / width**0.5)).to(device, dtype)
    targets = torch.randint(0, vocab, (tokens,), generator=gen).to(device)
    mask = (torch.rand(tokens, generator=gen) > 0.2).float().to(device)
    return hidden, weight, targets, mask


def _rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual.double().cpu() - expected).abs().max() / expected.abs().max()).item()


def _check(hidden, weight, targets, mask, cu_seqlens, seq_weights, aggregation, chunk_rows=8):
    h_ref = hidden.detach().double().cpu().requires_grad_()
    w_ref = weight.detach().double().cpu().requires_grad_()
    ref = packed_distill_loss_reference(h_ref, w_ref, targets.cpu(), mask.cpu(), cu_seqlens, seq_weights, aggregation)
    ref.backward()
    h, w = hidden.detach().requires_grad_(), weight.detach().requires_grad_()
    dev = hidden.device
    out = packed_distill_loss_triton(
        h, w, targets, mask, cu_seqlens.to(dev), seq_weights.to(dev), aggregation, chunk_rows=chunk_rows
    )
    out.backward()
    torch.testing.assert_close(out.double().cpu(), ref.double(), atol=2e-4, rtol=2e-4)
    assert _rel_err(h.grad, h_ref.grad) < GRAD_TOL[hidden.dtype]
    assert _rel_err(w.grad, w_ref.grad) < GRAD_TOL[hidden.dtype]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("aggregation", ["seq-mean-token-mean", "token-mean", "seq-mean-token-sum"])
def test_matches_reference(aggregation, dtype, device, small_vocab_blocks):
    hidden, weight, targets, mask = _batch(19, 32, 257, dtype, device)
    seq_weights = torch.tensor([1.0, 0.5, 2.0, 0.0, 1.5])  # a zero-weight sequence contributes nothing
    _check(hidden, weight, targets, mask, CU_SEQLENS, seq_weights, aggregation)


def test_one_sequence_vocab_below_block(device):
    hidden, weight, targets, mask = _batch(7, 16, 50, torch.float32, device, seed=3)
    _check(hidden, weight, targets, mask, torch.tensor([0, 7]), torch.tensor([0.7]), "token-mean", chunk_rows=3)


def test_single_token(device):
    hidden, weight, targets, _ = _batch(1, 16, 50, torch.bfloat16, device, seed=4)
    _check(
        hidden, weight, targets, torch.ones(1, device=device), torch.tensor([0, 1]), torch.tensor([2.0]), "token-mean"
    )


def test_empty_mask_is_zero_with_zero_gradient(device):
    hidden, weight, targets, _ = _batch(6, 16, 40, torch.float32, device, seed=5)
    hidden.requires_grad_()
    cu, sw = torch.tensor([0, 2, 6], device=device), torch.ones(2, device=device)
    loss = packed_distill_loss_triton(hidden, weight, targets, torch.zeros(6, device=device), cu, sw)
    loss.backward()
    assert loss.item() == 0.0 and hidden.grad.abs().max().item() == 0.0


def test_cpu_dispatch_uses_the_reference():
    hidden, weight, targets, mask = _batch(19, 8, 30, torch.float32, torch.device("cpu"))
    sw = torch.ones(5)
    got = packed_distill_loss(hidden, weight, targets, mask, CU_SEQLENS, sw)
    assert torch.equal(got, packed_distill_loss_reference(hidden, weight, targets, mask, CU_SEQLENS, sw))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"seq_weights": torch.ones(3)}, "seq_weights"),
        ({"aggregation": "sum"}, "aggregation"),
        ({"mask": torch.ones(4)}, "mask"),
    ],
)
def test_bad_inputs_raise(change, message):
    hidden, weight, targets, mask = _batch(19, 8, 30, torch.float32, torch.device("cpu"))
    args = {"targets": targets, "mask": mask, "cu_seqlens": CU_SEQLENS, "seq_weights": torch.ones(5), **change}
    with pytest.raises(ValueError, match=message):
        packed_distill_loss_triton(hidden, weight, **args)


@pytest.mark.gpu
def test_gpu_realistic_shapes_match_reference():
    hidden, weight, targets, mask = _batch(3001, 256, 32003, torch.bfloat16, torch.device("cuda"))
    cu = torch.tensor([0, 1000, 1000, 3001])
    _check(hidden, weight, targets, mask, cu, torch.tensor([1.0, 0.5, 2.0]), "seq-mean-token-mean", chunk_rows=2048)
