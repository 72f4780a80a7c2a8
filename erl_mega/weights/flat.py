"""Flattened per-dtype buckets in SGLang's `flattened_bucket` layout, and their (de)serialisation.

The payload is what `sglang.srt.weight_sync.tensor_bucket.FlattenedTensorBucket` plus
`sglang.srt.utils.MultiprocessingSerializer` produce: base64 of a ForkingPickler dump of
`{"flattened_tensor": 1-D tensor, "metadata": [FlattenedTensorMetadata, ...]}`. SGLang 0.5.23 flattens
to bytes (uint8, indices in bytes, dtypes mixed); ours keeps one dtype per bucket (indices in elements);
`tensor[start:end].view(dtype).reshape(shape)` rebuilds both. Tensors travel as
shared-memory (CPU) or CUDA IPC handles, so one server endpoint serves both transports.
"""

from __future__ import annotations

import base64
import io
import math
import pickle
from dataclasses import dataclass
from multiprocessing.reduction import ForkingPickler
from typing import Iterable, Iterator

import torch

from erl_mega.weights.buckets import NamedTensors

DEFAULT_BUCKET_BYTES = 512 << 20  # slime's default update_weight_buffer_size


@dataclass
class FlattenedTensorMetadata:
    """Where one tensor sits in its bucket; same name and fields as SGLang's, so its pickles load here."""

    name: str
    shape: torch.Size
    dtype: torch.dtype
    start_idx: int
    end_idx: int
    numel: int


@dataclass(frozen=True)
class FlatBucket:
    """One dtype's tensors concatenated into a 1-D buffer plus where each lies in it."""

    flattened_tensor: torch.Tensor  # [total numel], one dtype
    metadata: tuple[FlattenedTensorMetadata, ...]

    @property
    def nbytes(self) -> int:
        return self.flattened_tensor.numel() * self.flattened_tensor.element_size()

    def named_tensors(self) -> NamedTensors:
        """Views into the buffer, shaped as the originals (as SGLang's `reconstruct_tensors`)."""
        return [(m.name, _typed(self.flattened_tensor[m.start_idx : m.end_idx], m)) for m in self.metadata]


def _typed(chunk: torch.Tensor, m: FlattenedTensorMetadata) -> torch.Tensor:
    """A buffer slice as the tensor it holds; a copy when SGLang's unpadded byte layout left it misaligned."""
    if chunk.storage_offset() * chunk.element_size() % m.dtype.itemsize:
        chunk = chunk.clone()
    return chunk.view(m.dtype).reshape(m.shape)


def flatten(named: NamedTensors, shared: bool = False) -> FlatBucket:
    """Concatenate same-dtype tensors into one bucket (ValueError if empty or mixed).

    `shared`: a CPU buffer is allocated in shared memory and written once, instead of copied there after.
    """
    if not named:
        raise ValueError("flatten: empty bucket")
    dtypes = {t.dtype for _, t in named}
    if len(dtypes) != 1:
        raise ValueError(f"flatten: a bucket holds one dtype, got {sorted(map(str, dtypes))}")
    metadata, start = [], 0
    for name, tensor in named:
        n = tensor.numel()
        metadata.append(FlattenedTensorMetadata(name, tensor.shape, tensor.dtype, start, start + n, n))
        start += n
    parts = [t.detach().reshape(-1) for _, t in named]
    out = torch.empty(start, dtype=parts[0].dtype, device=parts[0].device)
    if shared and not out.is_cuda:
        out.share_memory_()
    return FlatBucket(torch.cat(parts, out=out), tuple(metadata))


def rebucket(stream: Iterable[NamedTensors], max_bytes: int = DEFAULT_BUCKET_BYTES,
             shared: bool = False) -> Iterator[FlatBucket]:
    """Regroup the trainer's HF-named stream into flat buckets of one dtype and at most `max_bytes` (or one tensor);
    `shared` as `flatten`'s."""
    pending: dict[torch.dtype, tuple[NamedTensors, int]] = {}
    for bucket in stream:
        for name, tensor in bucket:
            size = tensor.numel() * tensor.element_size()
            group, held = pending.get(tensor.dtype, ([], 0))
            if group and held + size > max_bytes:
                yield flatten(group, shared)
                group, held = [], 0
            group.append((name, tensor))
            pending[tensor.dtype] = (group, held + size)
    for group, _ in pending.values():
        yield flatten(group, shared)


def serialize(bucket: FlatBucket) -> str:
    """Base64 ForkingPickler dump of the bucket as SGLang's `flattened_bucket` dict (handles, not bytes)."""
    buf = io.BytesIO()
    payload = {"flattened_tensor": bucket.flattened_tensor, "metadata": list(bucket.metadata)}
    ForkingPickler(buf).dump(payload)
    return base64.b64encode(buf.getvalue()).decode("ascii")


# A payload arrives over HTTP: only torch's tensor/storage rebuilders and plain data may be unpickled.
_ALLOWED_MODULES = ("torch.multiprocessing.reductions", "torch._utils", "torch.storage", "multiprocessing.resource_sharer")
_ALLOWED_TORCH = {"Tensor", "Size", "device", "float32", "float16", "bfloat16", "float64", "int64", "int32", "int8", "uint8", "bool"}


class _PayloadUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if name == "FlattenedTensorMetadata":  # ours or SGLang's (sglang.srt.weight_sync.tensor_bucket)
            return FlattenedTensorMetadata
        if module in _ALLOWED_MODULES or (module == "torch" and name in _ALLOWED_TORCH):
            return super().find_class(module, name)
        if module == "collections" and name == "OrderedDict":
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"payload may not load {module}.{name}")


def deserialize(data: str | bytes) -> FlatBucket:
    """Rebuild a `flattened_bucket` payload (ours or SGLang's) into a FlatBucket; ValueError if it is not one."""
    try:
        raw = base64.b64decode(data, validate=True) if isinstance(data, str) else data
        obj = _PayloadUnpickler(io.BytesIO(raw)).load()
    except Exception as err:  # undecodable, truncated, forbidden class or a handle that no longer exists
        raise ValueError(f"serialized_named_tensors[0]: not a loadable flattened_bucket payload ({err})") from None
    if not isinstance(obj, dict) or set(obj) != {"flattened_tensor", "metadata"}:
        raise ValueError("serialized_named_tensors[0]: expected a dict with 'flattened_tensor' and 'metadata'")
    flat, metadata = obj["flattened_tensor"], obj["metadata"]
    if not isinstance(flat, torch.Tensor) or flat.dim() != 1:
        raise ValueError("serialized_named_tensors[0]: 'flattened_tensor' must be a 1-D tensor")
    for m in metadata:
        if m.end_idx > flat.numel() or m.end_idx - m.start_idx != m.numel:
            raise ValueError(f"serialized_named_tensors[0]: metadata of {m.name!r} lies outside the buffer")
        if m.numel * flat.element_size() != math.prod(m.shape) * m.dtype.itemsize:
            raise ValueError(f"serialized_named_tensors[0]: {m.name!r} spans {m.numel} buffer elements, not {m.shape}")
    return FlatBucket(flat, tuple(metadata))
