"""The C++ extension `erl_mega._native` (csrc/), with one clear message when it has not been built."""

try:
    from erl_mega._native import pack_sequences, sokoban_generate, sokoban_solve
except ImportError as err:  # the package was copied or checked out without building csrc/
    raise ImportError(
        "erl_mega._native (the C++ extension in csrc/) is not built: run `pip install -e .` in the repository "
        "root (or `python setup.py build_ext --inplace`); it needs a C++17 compiler and pybind11"
    ) from err

__all__ = ["pack_sequences", "sokoban_generate", "sokoban_solve"]
