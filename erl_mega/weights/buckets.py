"""The unit of weight movement: a bucket of HF-named full tensors, as trainers stream them and engines load them."""

from __future__ import annotations

import torch

NamedTensors = list[tuple[str, torch.Tensor]]  # one bucket: HF parameter names and full tensors
