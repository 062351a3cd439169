"""The Triton kernels compile for a GPU (sm_90 PTX), without a GPU.

The kernel tests run in the Triton interpreter, which executes the kernels as Python and so never
checks that the compiler accepts them. This compiles each kernel through Triton's real front end and
backend for a CUDA target, in a subprocess (the test session sets ``TRITON_INTERPRET=1``, under which
``triton.jit`` does not build compilable functions).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent(
    """
    import importlib.util, sys
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    root = sys.argv[1]
    spec = importlib.util.spec_from_file_location(
        "_kernels_compile", root + "/judgeq_cache/kernels/__init__.py", submodule_search_locations=[root + "/judgeq_cache/kernels"]
    )
    pkg = importlib.util.module_from_spec(spec)
    sys.modules["_kernels_compile"] = pkg
    spec.loader.exec_module(pkg)
    from _kernels_compile import triton_gather, triton_scoring_kernels as sk

    def compile_(fn, types, consts):
        signature = {n: "constexpr" if n in consts else types.get(n, "i32") for n in fn.arg_names}
        kernel = triton.compile(ASTSource(fn=fn, signature=signature, constexprs=consts),
                                target=GPUTarget("cuda", 90, 32))
        assert ".entry " + fn.__name__ in kernel.asm["ptx"]
        print("compiled", fn.__name__)

    f32 = "*fp32"
    for dtype, flags in (
        ("*bf16", dict(HAS_MASK=True, CAUSAL=True, HAS_SOFTCAP=False, DOT_FP32=False, IEEE=False)),
        ("*fp32", dict(HAS_MASK=False, CAUSAL=False, HAS_SOFTCAP=True, DOT_FP32=True, IEEE=True)),
    ):
        tiles = dict(flags, BLOCK_M=64, BLOCK_N=64, D_PAD=128)
        scalars = dict(q_ptr=dtype, k_ptr=dtype, mask_ptr="*u8", qk_scale="fp32", softcap="fp32")
        compile_(sk.row_stats_kernel, dict(scalars, max_ptr=f32, sum_ptr=f32), tiles)
        compile_(sk.accumulate_kernel, dict(scalars, rmax_ptr=f32, weight_ptr=f32, out_ptr=f32), tiles)
    compile_(
        sk.combine_kernel,
        dict(max_ptr=f32, sum_ptr=f32, mask_ptr="*u8", rmax_ptr=f32, weight_ptr=f32),
        dict(HAS_MASK=True, CAUSAL=True, BLOCK_M=64, S_PAD=4, M_PAD=32),
    )
    compile_(
        triton_gather._gather_kernel,
        dict(k_ptr="*bf16", v_ptr="*bf16", idx_ptr="*i64", ko_ptr="*bf16", vo_ptr="*bf16"),
        dict(BLOCK_K=32, DK_PAD=128, DV_PAD=64),
    )
    """
)


def test_kernels_compile_for_a_cuda_target():
    pytest.importorskip("triton")
    env = dict(os.environ, TRITON_INTERPRET="0")
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(ROOT)], capture_output=True, text=True, env=env, timeout=600
    )
    assert out.returncode == 0, out.stderr[-4000:]
    assert out.stdout.count("compiled") == 6
