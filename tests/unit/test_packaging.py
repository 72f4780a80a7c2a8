"""The installed layout: kernels/ installs as `erl_mega.kernels`, beside the PyPI package `kernels` (sglang's)."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[2]

PROBE = """
import json, kernels, erl_mega.kernels, erl_mega.kernels.dispatch as dispatch
print(json.dumps({"kernels": kernels.__file__, "ours": dispatch.__file__, "get_kernel": hasattr(kernels, "get_kernel")}))
"""


def _probe(cwd: Path) -> dict:
    import json

    out = subprocess.run([sys.executable, "-c", PROBE], cwd=cwd, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_pypi_kernels_and_ours_import_side_by_side(tmp_path):
    """`import kernels` is the hub-kernels package; ours answers only to `erl_mega.kernels`."""
    seen = _probe(tmp_path)
    assert seen["get_kernel"], seen  # the PyPI package's own API, not our folder
    assert Path(seen["kernels"]).parent.name == "kernels" and "site-packages" in seen["kernels"], seen
    assert Path(seen["ours"]) == REPO / "kernels" / "dispatch.py"


def test_kernels_satisfies_sglangs_requirement():
    """The installed `kernels` is one sglang accepts, so installing the project beside sglang breaks neither."""
    try:
        sglang = importlib.metadata.distribution("sglang")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("sglang is not installed (.ci/run installs it with --no-deps)")
    wanted = [Requirement(r) for r in sglang.requires or [] if r.startswith("kernels")]
    wanted = [r for r in wanted if r.name == "kernels" and (r.marker is None or r.marker.evaluate({"extra": ""}))]
    assert wanted, "sglang no longer declares kernels: revisit this test"
    installed = importlib.metadata.version("kernels")
    assert all(r.specifier.contains(installed) for r in wanted), (installed, [str(r) for r in wanted])
