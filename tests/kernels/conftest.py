"""Kernel tests: on a machine without CUDA the Triton kernels run in Triton's CPU interpreter.

TRITON_INTERPRET is read when `@triton.jit` decorates a kernel, i.e. when a kernel module is first
imported, so it is set here, before any test module of this directory imports one. With CUDA the
same tests run compiled on the GPU.
"""

import os
import sys

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
    _compiled = [
        f"{name}.{attr}"
        for name, module in list(sys.modules.items())
        if name.startswith("kernels.")
        for attr, value in vars(module).items()
        if type(value).__name__ == "JITFunction"
    ]
    if _compiled:
        raise pytest.UsageError(
            f"Triton kernels {_compiled} were imported before tests/kernels/conftest.py set TRITON_INTERPRET=1; "
            "run tests/kernels in its own pytest process or set TRITON_INTERPRET=1 in the environment"
        )

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


@pytest.fixture
def device() -> torch.device:
    """Where the kernels under test run: the GPU when there is one, else the interpreter on CPU."""
    return DEVICE


@pytest.fixture
def small_vocab_blocks(monkeypatch: pytest.MonkeyPatch) -> int:
    """Shrink the vocab block so small test vocabularies span several blocks with a ragged tail."""
    import erl_mega.kernels.online_softmax as online_softmax

    monkeypatch.setattr(online_softmax, "BLOCK_V", 64)
    return 64


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("gpu") and not torch.cuda.is_available():
        pytest.skip("needs CUDA")
