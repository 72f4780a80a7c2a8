"""Sum and max over one axis of a Triton tile, as this package's own jitted functions.

`tl.sum` / `tl.max` are themselves `@triton.jit` functions, decorated when triton is first imported:
in a process that imported triton before TRITON_INTERPRET=1 was set (megatron-core does, in a
one-process test run) the interpreter cannot call them. `tl.reduce` with these combiners compiles
to the same code on GPU.
"""

import triton
import triton.language as tl


@triton.jit
def _add(a, b):
    return a + b


@triton.jit
def _maximum(a, b):
    return tl.maximum(a, b)


@triton.jit
def tile_sum(x, axis: tl.constexpr):
    """Sum of tile x over `axis`."""
    return tl.reduce(x, axis, _add)


@triton.jit
def tile_max(x, axis: tl.constexpr):
    """Max of tile x over `axis`."""
    return tl.reduce(x, axis, _maximum)
