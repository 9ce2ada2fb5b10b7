"""Compile the exact launches the Triton backend makes, ahead of time, for a GPU architecture, without a GPU.

The interpreter checks what the kernels compute; only the real compiler catches what it accepts and a GPU would not
(tl.dot shapes, layouts, register and shared-memory limits, bf16 lowering). The launchers describe each launch as a
`Launch` (kernel, grid, args, constexprs); this module compiles one exactly as the JIT would at run time (the JIT's
own argument specialization: unit ints as constants, 16-divisible pointers and ints marked), so the register and
spill checks see the kernels that really run. Tensors are allocated on the "meta" device, so nothing is computed.

    python -m bsconv_fused.triton.aot --arch 80 90 --case 0   # every kernel of the 3x3 case, fp32/fp16/bf16

Must run in a process where TRITON_INTERPRET is not set (interpreted kernels cannot be compiled).
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Dict, Iterable, List, Optional

import torch

from ..activation import ACTIVATION_CODES


def compile_launch(launch, arch: int):
    """Compile one Launch for sm_<arch> exactly as the JIT would specialise it at run time; returns the compiled
    kernel (its .metadata has shared, num_warps, ...; .asm has ptx, cubin).

    The JIT does not compile the kernel as written: its binder (the function `JITFunction.run` builds) turns ints
    equal to 1 into constexprs (unit strides of NCHW / channels_last tensors) and marks pointers and ints divisible
    by 16 with `tt.divisibility`, which decides vector widths, cp.async and register counts. Compiling without it
    checks a different kernel (e.g. 252 vs 249 registers, NCHW and channels_last collapsing into one kernel), so
    this binds the arguments with the same binder. Meta tensors report data_ptr() 0: 16-divisible, like every
    allocation of PyTorch's caching allocator."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, make_backend
    from triton.runtime.jit import create_function_from_signature

    fn = launch.kernel
    target = GPUTarget("cuda", arch, 32)
    backend = make_backend(target)
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    kwargs = dict(launch.meta, debug=False, instrumentation_mode="")
    bound_args, specialization, options = binder(*launch.args, **kwargs)
    options, signature, constexprs, attrs = fn._pack_args(backend, kwargs, bound_args, specialization, options)
    return triton.compile(ASTSource(fn, signature, constexprs, attrs), target=target, options=options.__dict__)


def _cuobjdump() -> Optional[str]:
    # Triton ships the CUDA binary utilities it needs; a system toolkit may not have cuobjdump at all
    import triton

    for cand in (os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump"),
                 shutil.which("cuobjdump") or ""):
        if cand and os.access(cand, os.X_OK):
            return cand
    return None


def resource_usage(compiled) -> Dict[str, int]:
    """Registers, stack (spill) bytes and static shared memory of a compiled kernel, read from its cubin."""
    tool = _cuobjdump()
    if tool is None:
        return {}
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(compiled.asm["cubin"])
        f.flush()
        out = subprocess.run([tool, "--dump-resource-usage", f.name], capture_output=True, text=True).stdout
    m = re.search(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)", out)
    if not m:
        return {}
    return dict(regs=int(m.group(1)), stack=int(m.group(2)), local=int(m.group(4)))


def suite_cases() -> List[dict]:
    """Geometries that cover every code path the launchers can take (each constexpr combination that matters)."""
    return [
        # 3x3 stride 1, bias + mid_bias, channels_last, two C_in blocks in the weight-gradient kernel
        dict(N=2, C_in=96, C_out=64, H=28, W=28, k=(3, 3), stride=1, padding=1, dilation=1, bias=True, mid=True,
             channels_last=True),
        # stride 2, 5x5, no biases, NCHW
        dict(N=1, C_in=32, C_out=48, H=17, W=15, k=(5, 5), stride=2, padding=2, dilation=1, bias=False, mid=False,
             channels_last=False),
        # rectangular dilated kernel, C_in=3, odd C_out
        dict(N=1, C_in=3, C_out=17, H=9, W=31, k=(2, 7), stride=(1, 2), padding=(0, 3), dilation=(2, 1), bias=True,
             mid=False, channels_last=False),
        # small deep map (7x7, 256 channels)
        dict(N=2, C_in=256, C_out=256, H=7, W=7, k=(3, 3), stride=1, padding=1, dilation=1, bias=True, mid=True,
             channels_last=True),
        # the fused dx + d_pw launch at its largest blocks (C_out = C_in = 128: the most registers), pinned
        dict(N=4, C_in=128, C_out=128, H=28, W=28, k=(3, 3), stride=1, padding=1, dilation=1, bias=True, mid=True,
             channels_last=True, bwd="fused"),
        # the fused launch on NCHW with stride 2 and 5x5 (scalar dy loads, the smallest tap budget), pinned
        dict(N=2, C_in=64, C_out=128, H=28, W=28, k=(5, 5), stride=2, padding=2, dilation=1, bias=False, mid=True,
             channels_last=False, bwd="fused"),
        # the whole-rows forward (pinned) at the suite's deep shapes: five 7x7 images per tile
        # (M = 256, BLOCK_CO 128), channels_last; a 14x14 map NCHW
        dict(N=64, C_in=1024, C_out=1024, H=7, W=7, k=(3, 3), stride=1, padding=1, dilation=1, bias=True,
             mid=True, channels_last=True, forward_only=True, variant="rows"),
        dict(N=64, C_in=512, C_out=512, H=14, W=14, k=(3, 3), stride=1, padding=1, dilation=1, bias=True,
             mid=False, channels_last=False, forward_only=True, variant="rows"),
        # bands of full-width rows (28x28), stride 2 and 5x5 on a small map
        dict(N=8, C_in=256, C_out=256, H=28, W=28, k=(3, 3), stride=1, padding=1, dilation=1, bias=True,
             mid=True, channels_last=True, forward_only=True, variant="rows"),
        dict(N=4, C_in=96, C_out=80, H=13, W=11, k=(5, 5), stride=2, padding=2, dilation=1, bias=False,
             mid=True, channels_last=True, forward_only=True, variant="rows"),
    ]


def launches_for(case: dict, dtype: torch.dtype, activation: int = 0, arch: int = 90):
    """The launches of one case: forward and backward, or with an activation epilogue (which only the forward
    kernels take) the forward alone. arch: the compute capability x 10 the plans are made for."""
    from .launch import backward_launches, forward_launches

    dev = "meta"
    x = torch.empty(case["N"], case["C_in"], case["H"], case["W"], dtype=dtype, device=dev)
    if case["channels_last"]:
        x = x.to(memory_format=torch.channels_last)
    pw = torch.empty(case["C_out"], case["C_in"], dtype=dtype, device=dev)
    dw = torch.empty(case["C_out"], 1, *case["k"], dtype=dtype, device=dev)
    bias = torch.empty(case["C_out"], dtype=dtype, device=dev) if case["bias"] else None
    mid = torch.empty(case["C_out"], dtype=dtype, device=dev) if case["mid"] else None
    pinned = os.environ.get("BSCONV_FUSED_TRITON_FWD")
    if case.get("variant"):
        os.environ["BSCONV_FUSED_TRITON_FWD"] = case["variant"]
    try:
        y, fwd = forward_launches(x, pw, dw, bias, mid, case["stride"], case["padding"], case["dilation"],
                                  activation, arch=arch)
    finally:
        if case.get("variant"):
            if pinned is None:
                del os.environ["BSCONV_FUSED_TRITON_FWD"]
            else:
                os.environ["BSCONV_FUSED_TRITON_FWD"] = pinned
    if activation or case.get("forward_only"):
        return fwd
    # a case may pin the backward plan ("fused" / "split"), as BSCONV_FUSED_TRITON_BWD does
    saved = os.environ.get("BSCONV_FUSED_TRITON_BWD")
    os.environ["BSCONV_FUSED_TRITON_BWD"] = case.get("bwd", saved or "")
    try:
        bwd, _ = backward_launches(torch.empty_like(y), x, pw, dw, mid, case["stride"], case["padding"],
                                   case["dilation"], (True, True, True, case["bias"], case["mid"]))
    finally:
        if saved is None:
            del os.environ["BSCONV_FUSED_TRITON_BWD"]
        else:
            os.environ["BSCONV_FUSED_TRITON_BWD"] = saved
    return fwd + bwd


def compile_suite(archs: Iterable[int], dtypes: Iterable[torch.dtype], cases: Iterable[int] = (0,),
                  verbose: bool = True, activation: int = 0) -> List[dict]:
    rows = []
    all_cases = suite_cases()
    for arch in archs:
        for dtype in dtypes:
            for i in cases:
                case = all_cases[i]
                for launch in launches_for(case, dtype, activation, arch):
                    t0 = time.perf_counter()
                    k = compile_launch(launch, arch)
                    md = k.metadata
                    row = dict(arch=arch, dtype=str(dtype).replace("torch.", ""), case=i,
                               kernel=launch.kernel.__name__, lead=launch.meta.get("LEAD"),
                               act=launch.meta.get("ACT"),
                               shared_bytes=md.shared, **resource_usage(k),
                               seconds=round(time.perf_counter() - t0, 2))
                    rows.append(row)
                    if verbose:
                        print(" ".join(f"{k}={v}" for k, v in row.items()), flush=True)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", type=int, nargs="+", default=[80, 90])
    ap.add_argument("--dtype", nargs="+", default=["float32", "float16", "bfloat16"])
    ap.add_argument("--case", type=int, nargs="+", default=None,
                    help=f"indices into suite_cases() (default: all {len(suite_cases())}; 0 is the 3x3 main case)")
    ap.add_argument("--activation", default="none", choices=list(ACTIVATION_CODES),
                    help="compile the forward kernels with this activation epilogue (the forward launches only)")
    args = ap.parse_args(argv)
    cases = args.case if args.case is not None else range(len(suite_cases()))
    rows = compile_suite(args.arch, [getattr(torch, d) for d in args.dtype], cases,
                         activation=ACTIVATION_CODES[args.activation])
    print(f"compiled {len(rows)} kernels")
    return 0


if __name__ == "__main__":
    sys.exit(main())
