"""Flattened-bucket payloads: ours (one dtype, element indices) and SGLang 0.5.23's (bytes, mixed dtypes) rebuild exactly.

Run: python -m pytest tests/unit/test_flat.py -q
"""

from __future__ import annotations

import base64
import io
from multiprocessing.reduction import ForkingPickler

import pytest
import torch

from erl_mega.weights.flat import FlattenedTensorMetadata, deserialize, flatten, rebucket, serialize


def _named() -> list[tuple[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    return [("a.weight", torch.randn(3, 5, generator=g)), ("b.bias", torch.randn(7, generator=g).bfloat16()),
            ("c.ids", torch.randint(-9, 9, (2, 2), generator=g)), ("d.weight", torch.randn(4, 1, 2, generator=g))]


def _sglang_layout(named) -> str:
    """What sglang's FlattenedTensorBucket + MultiprocessingSerializer make: uint8 bytes, byte indices."""
    metadata, chunks, start = [], [], 0
    for name, t in named:
        flat = t.flatten().view(torch.uint8)
        metadata.append(FlattenedTensorMetadata(name, t.shape, t.dtype, start, start + flat.numel(), flat.numel()))
        chunks.append(flat)
        start += flat.numel()
    buf = io.BytesIO()
    ForkingPickler(buf).dump({"flattened_tensor": torch.cat(chunks), "metadata": metadata})
    return base64.b64encode(buf.getvalue()).decode()


def test_sglang_byte_layout_rebuilds_mixed_dtypes_exactly():
    named = _named()
    rebuilt = deserialize(_sglang_layout(named)).named_tensors()
    assert [n for n, _ in rebuilt] == [n for n, _ in named]
    for (_, got), (_, want) in zip(rebuilt, named):
        assert got.dtype == want.dtype and torch.equal(got, want)


def test_our_per_dtype_buckets_round_trip():
    named = _named()
    buckets = list(rebucket([named[:2], named[2:]], max_bytes=64, shared=True))
    assert all(len({m.dtype for m in b.metadata}) == 1 and b.flattened_tensor.is_shared() for b in buckets)
    rebuilt = dict(t for b in buckets for t in deserialize(serialize(b)).named_tensors())
    assert all(torch.equal(rebuilt[n], t) for n, t in named)


def test_metadata_that_does_not_fit_its_shape_is_refused():
    bucket = flatten([("w", torch.zeros(6))])
    m = bucket.metadata[0]
    bad = type(bucket)(bucket.flattened_tensor, (FlattenedTensorMetadata("w", torch.Size([7]), m.dtype, 0, 6, 6),))
    with pytest.raises(ValueError, match="'w' spans 6"):
        deserialize(serialize(bad))
