"""Compile a Launch the way the JIT does (bsconv_fused.triton.aot.compile_launch) and read back what the static
model needs: SASS, registers, spill stack, shared memory, warps.

Runs without a GPU (ptxas and cuobjdump ship with Triton), but not in a process where TRITON_INTERPRET=1 was set
before the kernels were defined: interpreted kernels cannot be compiled."""
from __future__ import annotations

import math
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from typing import Optional, Tuple

from ...triton.aot import compile_launch, resource_usage

ARCHS = {"sm_90": 90, "sm_80": 80}


@dataclass(frozen=True)
class CompiledLaunch:
    """One launch after compilation: what the cost model reads."""

    name: str  # kernel function name, plus the LEAD flag where a kernel has two compiled variants
    launch: object  # the bsconv_fused.triton.launch.Launch
    arch: int
    sass: str
    regs: int
    stack: int  # bytes of per-thread stack: > 0 means spills (or a call stack)
    shared: int  # dynamic shared memory per CTA, bytes (Triton's allocation)
    num_warps: int
    grid: Tuple[int, ...]

    @property
    def ctas(self) -> int:
        return math.prod(self.grid)


def _tool(name: str) -> str:
    import triton

    for cand in (os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name),
                 shutil.which(name) or ""):
        if cand and os.access(cand, os.X_OK):
            return cand
    raise RuntimeError(f"{name} not found (Triton's backends/nvidia/bin or PATH): the static report needs it")


def sass_of(cubin: bytes) -> str:
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        r = subprocess.run([_tool("cuobjdump"), "-sass", f.name], capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"cuobjdump -sass failed: {r.stderr.strip()}")
    return r.stdout


def launch_name(launch) -> str:
    name = launch.kernel.__name__
    lead = launch.meta.get("LEAD")
    return name if lead is None else f"{name}[{'lead' if lead else 'rest'}]"


def compile_for_model(launch, arch: int) -> CompiledLaunch:
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        raise RuntimeError("the static report compiles kernels: run it in a process without TRITON_INTERPRET=1")
    k = compile_launch(launch, arch)
    res = resource_usage(k)
    if not res:
        raise RuntimeError(f"{launch_name(launch)}: cuobjdump --dump-resource-usage gave no register count")
    return CompiledLaunch(name=launch_name(launch), launch=launch, arch=arch, sass=sass_of(k.asm["cubin"]),
                          regs=res["regs"], stack=res["stack"], shared=int(k.metadata.shared),
                          num_warps=int(k.metadata.num_warps), grid=tuple(int(g) for g in launch.grid))


def arch_number(arch) -> int:
    """'sm_90' / 'sm_80' / 90 / 80 -> 90 / 80."""
    if isinstance(arch, int):
        n: Optional[int] = arch
    else:
        n = ARCHS.get(str(arch))
    if n not in ARCHS.values():
        raise ValueError(f"arch must be one of {tuple(ARCHS)} (or 90, 80), got {arch!r}")
    return n
