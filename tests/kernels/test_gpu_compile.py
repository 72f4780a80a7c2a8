"""Every Triton kernel compiles for Hopper (sm_90) on a machine without a GPU.

The other CPU tests run the kernels in Triton's interpreter, which type-checks less than the compiler
(a loop-carried value that changes shape runs there and fails to compile for a GPU). This compiles the
real kernels ahead of time with the ptxas that ships in the triton wheel, in a subprocess: this
directory's conftest has switched the kernels in this process to the interpreter.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _compile_all() -> None:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from erl_mega.kernels.fused_linear_logprob import KL_KINDS, _policy_token_kernel
    from erl_mega.kernels.group_advantages import BLOCK_I, BLOCK_J, _group_advantages_kernel
    from erl_mega.kernels.online_softmax import BLOCK_V, NUM_WARPS, ROWS, _logits_grad_kernel, _row_stats_kernel

    def compile_for_sm90(fn, pointers: dict[str, str], constexprs: dict, num_warps: int) -> None:
        scalars = {name: "fp32" for name in ("inv_temp", "eps", "clip_low", "clip_high", "dual_clip")}
        scalars |= {name: "fp32" for name in ("kl_coef", "entropy_coef", "tis_cap")}
        signature = {
            name: "constexpr" if name in constexprs else pointers.get(name, scalars.get(name, "i32"))
            for name in fn.arg_names
        }
        source = ASTSource(fn=fn, signature=signature, constexprs=constexprs)
        triton.compile(source, target=GPUTarget("cuda", 90, 32), options={"num_warps": num_warps})

    fp32 = "*fp32"
    stats = {"logits_ptr": fp32, "targets_ptr": "*i64", "stats_ptr": fp32}
    compile_for_sm90(_row_stats_kernel, stats, {"R": ROWS, "BLOCK": BLOCK_V}, NUM_WARPS)
    for grad in ("*bf16", fp32):
        for has_entropy_grad in (True, False):
            pointers = {name: fp32 for name in _logits_grad_kernel.arg_names if name.endswith("_ptr")}
            pointers |= {"grad_ptr": grad, "targets_ptr": "*i64"}
            constexprs = {"HAS_ENTROPY_GRAD": has_entropy_grad, "R": ROWS, "BLOCK": BLOCK_V}
            compile_for_sm90(_logits_grad_kernel, pointers, constexprs, NUM_WARPS)
    for kl_kind in (0, *KL_KINDS.values()):
        for flags in ({"HAS_DUAL": True, "HAS_TIS": True}, {"HAS_DUAL": False, "HAS_TIS": False}):
            pointers = {name: fp32 for name in _policy_token_kernel.arg_names if name.endswith("_ptr")}
            pointers["mask_ptr"] = "*i1" if kl_kind == 0 else fp32  # bool masks load too
            compile_for_sm90(_policy_token_kernel, pointers, {**flags, "KL_KIND": kl_kind, "BLOCK": 1024}, 4)
    for normalise in (True, False):
        pointers = {"rewards_ptr": fp32, "ids_ptr": "*i64", "out_ptr": fp32}
        compile_for_sm90(_group_advantages_kernel, pointers, {"NORMALISE": normalise, "BI": BLOCK_I, "BJ": BLOCK_J}, 4)


def test_every_kernel_compiles_for_sm90():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env["TRITON_DEFAULT_FP_FUSION"] = "1"  # the default, stated to silence triton 3.9's warning
    run = subprocess.run([sys.executable, __file__], env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-4000:]


if __name__ == "__main__":
    _compile_all()
