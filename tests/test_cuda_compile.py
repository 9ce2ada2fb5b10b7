"""Every CUDA source compiles for sm_75, sm_80 and sm_90 (`nvcc -cubin`, no link, no GPU needed), and the SASS of the
sm_80+ builds keeps two properties that a silent regression would lose:

- no stack frame and no spills in any kernel: a by-reference `__noinline__` helper once gave the wgrad kernel a
  536-byte frame and turned its shared-memory accesses into generic ones (static review, finding M1);
- no kernel touches memory through generic loads/stores (LD.E / ST.E): the compiler emits those when it loses track
  of the shared-memory address space (the M1 helpers did, and nvcc's own bf16/TF32 WMMA loads do, which is why
  common.cuh issues those with .shared spelled out);
- every fp16/bf16 tensor-core kernel loads its WMMA fragments with LDSM (TF32 uses plain shared LDS: ldmatrix has no
  32-bit transpose).

sm_75 only has to compile: its device passes get empty kernel bodies (BSCONV_ARCH_OK in csrc/cuda/common.cuh) and
the host entry points refuse pre-sm_80 devices. Each compile takes seconds to a minute on a 2-core machine.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCES = ("forward", "backward")
ARCHS = (75, 80, 90)


def _nvcc() -> str | None:
    home = os.environ.get("CUDA_HOME") or "/usr/local/cuda"
    path = os.path.join(home, "bin", "nvcc")
    return path if os.path.exists(path) else shutil.which("nvcc")


def _cuobjdump() -> str | None:
    found = shutil.which("cuobjdump")
    if found:
        return found
    nvcc = _nvcc()
    if nvcc and os.path.exists(os.path.join(os.path.dirname(nvcc), "cuobjdump")):
        return os.path.join(os.path.dirname(nvcc), "cuobjdump")
    try:  # triton ships one
        import triton

        path = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
        return path if os.path.exists(path) else None
    except ImportError:
        return None


NVCC = _nvcc()
pytestmark = pytest.mark.skipif(NVCC is None, reason="needs nvcc (set CUDA_HOME)")

# The device flags of setup.py's CUDAExtension (keep in sync), plus -Xptxas -v for the resource report.
FLAGS = ["-O3", "-std=c++17", "-lineinfo", "-U__CUDA_NO_HALF_OPERATORS__", "-U__CUDA_NO_HALF_CONVERSIONS__",
         "-U__CUDA_NO_HALF2_OPERATORS__", "-U__CUDA_NO_BFLOAT16_CONVERSIONS__", "-Xptxas", "-v"]


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    """compiled(source, arch) -> (returncode, ptxas/nvcc output, cubin path), each compile done once."""
    out_dir = tmp_path_factory.mktemp("cubin")
    cache: dict[tuple[str, int], tuple[int, str, str]] = {}

    def get(source: str, arch: int):
        key = (source, arch)
        if key not in cache:
            cubin = str(out_dir / f"{source}_sm{arch}.cubin")
            r = subprocess.run([NVCC, *FLAGS, f"-arch=sm_{arch}", "-cubin", "-I", os.path.join(ROOT, "csrc"),
                                os.path.join(ROOT, "csrc", "cuda", f"{source}.cu"), "-o", cubin],
                               capture_output=True, text=True, timeout=1200)
            cache[key] = (r.returncode, r.stdout + r.stderr, cubin)
        return cache[key]

    return get


def _resources(log: str) -> dict[str, tuple[int, int, int]]:
    """ptxas -v: kernel (mangled) -> (stack frame, spill store, spill load) bytes."""
    out = {}
    for m in re.finditer(r"Function properties for (\S+)\s*\n\s*(\d+) bytes stack frame, (\d+) bytes spill stores, "
                         r"(\d+) bytes spill loads", log):
        out[m.group(1)] = (int(m.group(2)), int(m.group(3)), int(m.group(4)))
    return out


# forward_kernel<__half, 64, true> mangles as ...forward_kernelI6__halfLi64ELb1EE...: the last flag is TC.
_KERNEL = re.compile(r"(forward|dx|dpw|wgrad)_kernelI\w+?Li\d+ELb([01])EE")


@pytest.mark.parametrize("arch", ARCHS, ids=lambda a: f"sm{a}")
@pytest.mark.parametrize("source", SOURCES)
def test_compiles(compiled, source, arch):
    rc, log, _ = compiled(source, arch)
    assert rc == 0, log[-4000:]


@pytest.mark.parametrize("arch", [a for a in ARCHS if a >= 80], ids=lambda a: f"sm{a}")
@pytest.mark.parametrize("source", SOURCES)
def test_no_stack_frame_or_spills(compiled, source, arch):
    rc, log, _ = compiled(source, arch)
    assert rc == 0, log[-4000:]
    res = _resources(log)
    assert any(_KERNEL.search(name) for name in res), f"no kernel found in the ptxas report:\n{log[-2000:]}"
    bad = {name: r for name, r in res.items() if any(r)}
    assert not bad, f"stack frame / spills (bytes: stack, spill stores, spill loads): {bad}"


def _sass_by_kernel(cubin: str) -> dict[str, str]:
    sass = subprocess.run([_cuobjdump(), "-sass", cubin], capture_output=True, text=True, timeout=600).stdout
    out = {}
    for block in re.split(r"\n\s*Function : ", sass)[1:]:
        name, body = block.split("\n", 1)
        out[name.strip()] = body
    return out


needs_cuobjdump = pytest.mark.skipif(_cuobjdump() is None, reason="needs cuobjdump (CUDA toolkit or triton's copy)")


@needs_cuobjdump
@pytest.mark.parametrize("arch", [a for a in ARCHS if a >= 80], ids=lambda a: f"sm{a}")
@pytest.mark.parametrize("source", SOURCES)
def test_no_generic_memory_access(compiled, source, arch):
    rc, log, cubin = compiled(source, arch)
    assert rc == 0, log[-4000:]
    kernels = _sass_by_kernel(cubin)
    assert kernels, "no kernel in the SASS"
    generic = {name: n for name, body in kernels.items() if (n := len(re.findall(r"\b(?:LD|ST)\.E", body)))}
    assert not generic, f"generic loads/stores (a lost shared-memory address space?): {generic}"


@needs_cuobjdump
@pytest.mark.parametrize("arch", [a for a in ARCHS if a >= 80], ids=lambda a: f"sm{a}")
@pytest.mark.parametrize("source", SOURCES)
def test_tensor_core_kernels_use_ldsm(compiled, source, arch):
    rc, log, cubin = compiled(source, arch)
    assert rc == 0, log[-4000:]
    counts = {}
    for name, body in _sass_by_kernel(cubin).items():
        m = _KERNEL.search(name)
        if m and m.group(2) == "1" and "kernelIf" not in name:  # fp16 / bf16 tensor-core instantiations
            counts[name] = len(re.findall(r"\bLDSM\b", body))
    assert counts, "no fp16/bf16 tensor-core kernel found in the SASS"
    missing = [name for name, n in counts.items() if n == 0]
    assert not missing, f"tensor-core kernels without LDSM (shared-memory address space lost?): {missing}"
