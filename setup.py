"""Build: the Python packages, the hydra configs (`erl_mega.configs`), the kernels (`erl_mega.kernels`) and the C++ extension."""

from glob import glob

from pybind11.setup_helpers import Pybind11Extension, build_ext
from setuptools import find_packages, setup

native = Pybind11Extension(
    "erl_mega._native",
    sorted(glob("csrc/*.cpp")),
    include_dirs=["csrc"],
    depends=sorted(glob("csrc/*.h")),
    cxx_std=17,
    extra_compile_args=["-O3"],
)

setup(
    packages=find_packages(include=["erl_mega", "erl_mega.*"]) + ["erl_mega.configs", "erl_mega.kernels"],
    # kernels/ and configs/ sit at the top level of the repo and install under erl_mega (the PyPI package
    # `kernels`, which sglang requires, owns the top-level name).
    package_dir={"erl_mega.configs": "configs", "erl_mega.kernels": "kernels"},
    package_data={"erl_mega.configs": ["*.yaml", "*/*.yaml"], "erl_mega.plan": ["presets/*.json"]},
    ext_modules=[native] if native.sources else [],
    cmdclass={"build_ext": build_ext},
)
