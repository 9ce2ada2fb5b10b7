"""Build script: the pure-Python package always, plus the compiled extension bsconv_fused._C when it can be built.

What gets built (metadata lives in pyproject.toml):
- CUDAExtension (CUDA + CPU kernels) when the importable torch has CUDA and nvcc is found,
- CppExtension (CPU kernels only) when torch has no CUDA, nvcc is missing, or BSCONV_FUSED_CPU_ONLY=1,
- nothing (pure Python: Triton + reference) when BSCONV_FUSED_SKIP_BUILD=1 or torch is not importable at build
  time (an isolated pip build: use `pip install --no-build-isolation ...`),
- nothing either, with one message naming what is missing, when no C++ compiler is found or the compile fails:
  the install then completes as the pure-Python package (unless BSCONV_FUSED_FORCE_BUILD / _FORCE_CUDA ask for a
  failure). The message is also written to bsconv_fused/_build_failed.txt, which `bsconv_fused.available_backends()`
  reports, because pip shows a successful build's output only with -v.

Knobs (environment variables):
  BSCONV_FUSED_SKIP_BUILD=1   pure-Python install, no compiler needed
  BSCONV_FUSED_CPU_ONLY=1     build the CPU kernels only, even when CUDA is available
  BSCONV_FUSED_FORCE_BUILD=1  fail instead of installing pure Python when torch is not importable, no compiler is
                              found or the compile fails
  BSCONV_FUSED_FORCE_CUDA=1   fail instead of falling back to a CPU-only build when CUDA cannot be built (and
                              instead of a pure-Python install when the build fails)
  TORCH_CUDA_ARCH_LIST        e.g. "8.0;9.0" (default: the visible GPUs, else a list that suits the nvcc found);
                              entries below 8.0 (the kernels need sm_80) and entries this nvcc cannot compile are
                              dropped with a message
  MAX_JOBS                    parallel compile jobs (ninja)
  CUDA_HOME                   CUDA toolkit root (default: /usr/local/cuda when it exists)
"""
from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import sys

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _log(msg: str) -> None:
    print(f"bsconv_fused setup: {msg}", file=sys.stderr)


def _find_cuda_home() -> str | None:
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if home:
        return home
    # torch.utils.cpp_extension guesses from `which nvcc`, which is a wrapper script on some machines (it then
    # guesses /usr/local): prefer the conventional toolkit root.
    if os.path.exists("/usr/local/cuda/bin/nvcc"):
        return "/usr/local/cuda"
    nvcc = shutil.which("nvcc")
    if nvcc:
        return os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))
    return None


def _nvcc_version(cuda_home: str) -> tuple[int, int] | None:
    nvcc = os.path.join(cuda_home, "bin", "nvcc")
    try:
        out = subprocess.run([nvcc, "--version"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.search(r"release (\d+)\.(\d+)", out)
    return (int(m.group(1)), int(m.group(2))) if m else None


def _default_arch_list(version: tuple[int, int]) -> str:
    """Ampere and newer (the kernels use mma / bf16), with PTX for the newest so later GPUs can JIT."""
    if version >= (12, 8):
        return "8.0;9.0;10.0;12.0+PTX"
    if version >= (11, 8):
        return "8.0;9.0+PTX"
    return "8.0+PTX"


def _nvcc_archs(cuda_home: str) -> set[int] | None:
    """The compute capabilities (10 * major + minor) this nvcc compiles for, or None when it cannot say."""
    nvcc = os.path.join(cuda_home, "bin", "nvcc")
    try:
        out = subprocess.run([nvcc, "--list-gpu-arch"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    archs = {int(m) for m in re.findall(r"compute_(\d+)", out)}
    return archs or None


# The kernels use bf16 and TF32 tensor cores (sm_80). Older archs would only get empty kernel bodies, and the
# extension refuses those devices at run time with the reason (bsconv_fused::cuda_refusal), so they are not built.
_MIN_ARCH = 80
_ARCH_ENTRY = re.compile(r"^(\d+)\.(\d+)([a-z]?)(\+PTX)?$")


def _filter_arch_list(arch_list: str, supported: set[int] | None) -> tuple[list[str], list[str]]:
    """(kept, dropped-with-reason) entries of a TORCH_CUDA_ARCH_LIST value (';' or space separated)."""
    kept, dropped = [], []
    for entry in re.split(r"[;\s]+", arch_list.strip()):
        if not entry:
            continue
        m = _ARCH_ENTRY.match(entry)
        if m is None:  # a named arch (e.g. "Ampere"): torch resolves it, we cannot judge it
            kept.append(entry)
            continue
        cc = 10 * int(m.group(1)) + int(m.group(2))
        if cc < _MIN_ARCH:
            dropped.append(f"{entry} (the kernels need compute capability 8.0 or newer)")
        elif supported is not None and cc not in supported:
            dropped.append(f"{entry} (this nvcc cannot compile for it)")
        else:
            kept.append(entry)
    return kept, dropped


def _visible_arch_list(torch) -> str:
    """The visible GPUs' archs as torch would build them (the newest with PTX), or '' when none is visible."""
    try:
        caps = sorted({torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())})
    except Exception:  # noqa: BLE001 - a broken driver must not break the install: use the default list
        return ""
    if not caps:
        return ""
    names = [f"{major}.{minor}" for major, minor in caps]
    names[-1] += "+PTX"
    return ";".join(names)


def _resolve_arch_list(torch, cuda_home: str) -> str:
    """The TORCH_CUDA_ARCH_LIST to build with: the user's or the visible GPUs', minus what cannot or need not be
    built; the default list for this nvcc when nothing is left (the kernels then run on newer GPUs only and an
    older visible GPU is refused at run time, with the reason)."""
    version = _nvcc_version(cuda_home) or (12, 0)
    supported = _nvcc_archs(cuda_home)
    user = os.environ.get("TORCH_CUDA_ARCH_LIST", "").strip()
    source = "TORCH_CUDA_ARCH_LIST" if user else "the visible GPUs"
    requested = user or (_visible_arch_list(torch) if torch.cuda.is_available() else "")
    if requested:
        kept, dropped = _filter_arch_list(requested, supported)
        for d in dropped:
            _log(f"dropping arch {d} from {source}")
        if kept:
            return ";".join(kept)
        _log(f"nothing left of {source} ({requested!r}) to build for: building this nvcc's default list instead "
             "(such a GPU is refused at run time, with the reason)")
    default, dropped = _filter_arch_list(_default_arch_list(version), supported)
    for d in dropped:
        _log(f"dropping arch {d} from the default list")
    if not default:  # an nvcc without sm_80..: let it pick (the build will say what it supports)
        default = [f"{max(supported)//10}.{max(supported)%10}+PTX"] if supported else ["8.0+PTX"]
    return ";".join(default)


BUILD_FAILED_NOTE = "_build_failed.txt"  # beside _C in the package; bsconv_fused._ext reports its text


def _compiler_missing() -> str | None:
    """What is missing to compile C++ here, or None. Checked up front so a machine without a compiler gets one
    sentence instead of a ninja traceback."""
    cxx = (os.environ.get("CXX") or "c++").split()[0]
    if shutil.which(cxx) is None and (cxx != "c++" or shutil.which("g++") is None):
        return (f"no C++ compiler found (`{cxx}` is not on PATH; install g++ or clang, e.g. `apt-get install g++`, "
                "or set CXX)")
    return None


def _must_build() -> bool:
    return _flag("BSCONV_FUSED_FORCE_BUILD") or _flag("BSCONV_FUSED_FORCE_CUDA")


def _pure_python_message(what: str) -> str:
    return (f"the compiled extension bsconv_fused._C was not built: {what}. Installed the pure-Python package "
            "(Triton + reference backends); the CPU kernels need the extension. Fix the cause, then rebuild with "
            "`pip install --no-build-isolation -e .` (BSCONV_FUSED_FORCE_BUILD=1 makes this an error).")


def _guarded_build_ext(base):
    """build_ext that installs pure Python with one clear message when the compile fails, unless a FORCE flag asks
    for the failure (CI)."""

    class GuardedBuildExt(base):
        def _note_path(self) -> str:
            return os.path.join(os.path.dirname(self.get_ext_fullpath("bsconv_fused._C")), BUILD_FAILED_NOTE)

        def run(self):
            note = self._note_path()
            try:
                super().run()
            except (Exception, SystemExit) as e:  # CompileError, ninja's RuntimeError, a failed link, ...
                if _must_build():
                    raise
                detail = " ".join(str(e).split())[-300:] or type(e).__name__
                msg = _pure_python_message(f"the build failed ({type(e).__name__}: {detail}); the full compiler "
                                           "output is above in `pip install -v` / scripts/setup_env.sh's log")
                _log(msg)
                os.makedirs(os.path.dirname(note), exist_ok=True)
                with open(note, "w") as f:
                    f.write(msg + "\n")
                return
            if os.path.exists(note):
                os.remove(note)

    return GuardedBuildExt


def _sources(*patterns: str) -> list[str]:
    out: list[str] = []
    for pattern in patterns:
        out += sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern)))
    return out


def _extensions():
    """(ext_modules, cmdclass) for this environment; ([], {}) for a pure-Python install."""
    stale = os.path.join(ROOT, "bsconv_fused", BUILD_FAILED_NOTE)
    if os.path.exists(stale):  # from an earlier failed build: this one decides afresh
        os.remove(stale)
    if _flag("BSCONV_FUSED_SKIP_BUILD"):
        _log("BSCONV_FUSED_SKIP_BUILD=1: pure-Python install (Triton + reference backends)")
        return [], {}
    try:
        import torch
    except ImportError:
        if _flag("BSCONV_FUSED_FORCE_BUILD"):
            raise RuntimeError("BSCONV_FUSED_FORCE_BUILD=1 but torch is not importable at build time; install torch "
                               "first and build with `pip install --no-build-isolation ...`")
        _log("torch is not importable at build time: pure-Python install. For the compiled extension install torch, "
             "then `pip install --no-build-isolation -e .`")
        return [], {}

    cuda_home = None
    why_no_cuda = None
    if _flag("BSCONV_FUSED_CPU_ONLY"):
        why_no_cuda = "BSCONV_FUSED_CPU_ONLY=1"
    elif torch.version.cuda is None:
        why_no_cuda = f"torch {torch.__version__} is a build without CUDA"
    else:
        cuda_home = _find_cuda_home()
        if cuda_home is None or not os.path.exists(os.path.join(cuda_home, "bin", "nvcc")):
            why_no_cuda = f"nvcc not found (CUDA_HOME={cuda_home or 'unset'}); set CUDA_HOME to the toolkit root"
            cuda_home = None
        elif not _sources("csrc/cuda/*.cu"):
            why_no_cuda = "no CUDA sources in csrc/cuda"
            cuda_home = None
    if why_no_cuda and _flag("BSCONV_FUSED_FORCE_CUDA"):
        raise RuntimeError(f"BSCONV_FUSED_FORCE_CUDA=1 but the CUDA extension cannot be built: {why_no_cuda}")

    missing = _compiler_missing()
    if missing:
        if _must_build():
            raise RuntimeError(f"BSCONV_FUSED_FORCE_BUILD/FORCE_CUDA set but {missing}")
        msg = _pure_python_message(missing)
        _log(msg)
        with open(os.path.join(ROOT, "bsconv_fused", BUILD_FAILED_NOTE), "w") as f:
            f.write(msg + "\n")
        return [], {}

    if cuda_home is not None:
        # Must be set before torch.utils.cpp_extension is imported: it resolves CUDA_HOME at import time.
        os.environ["CUDA_HOME"] = cuda_home
    from torch.utils import cpp_extension

    # No loop-to-memcpy/memset rewriting: it turns the per-pixel channel loops into library calls and pushes the
    # register-blocked accumulators of the depthwise stencil to memory.
    cxx_flags = ["-O3", "-g0", "-ffp-contract=fast", "-fno-tree-loop-distribute-patterns"]
    link_flags: list[str] = []
    if sys.platform.startswith("linux"):
        # ATen's parallel_for is an inline OpenMP region: it only runs in parallel when we compile with OpenMP.
        # The libgomp we link resolves to the one torch has already loaded (same soname).
        cxx_flags.append("-fopenmp")
        link_flags.append("-fopenmp")
    sources = _sources("csrc/bsconv_fused.cpp", "csrc/cpu/*.cpp")

    if cuda_home is not None:
        cpp_extension.CUDA_HOME = cuda_home
        os.environ["TORCH_CUDA_ARCH_LIST"] = _resolve_arch_list(torch, cuda_home)
        nvcc_flags = [
            "-O3",
            "-lineinfo",
            # The kernels are torch-free and use the CUDA half/bfloat16 operators, which torch's defaults disable.
            "-U__CUDA_NO_HALF_OPERATORS__",
            "-U__CUDA_NO_HALF_CONVERSIONS__",
            "-U__CUDA_NO_HALF2_OPERATORS__",
            "-U__CUDA_NO_BFLOAT16_CONVERSIONS__",
        ]
        ext = cpp_extension.CUDAExtension(
            name="bsconv_fused._C",
            sources=sources + _sources("csrc/glue/cuda_*.cpp", "csrc/cuda/*.cu"),
            include_dirs=[os.path.join(ROOT, "csrc")],
            define_macros=[("BSCONV_FUSED_WITH_CUDA", "1")],
            extra_compile_args={"cxx": cxx_flags, "nvcc": nvcc_flags},
            extra_link_args=link_flags,
        )
        _log(f"building the CUDA extension (CUDA_HOME={cuda_home}, "
             f"TORCH_CUDA_ARCH_LIST={os.environ['TORCH_CUDA_ARCH_LIST']})")
    else:
        ext = cpp_extension.CppExtension(
            name="bsconv_fused._C",
            sources=sources,
            include_dirs=[os.path.join(ROOT, "csrc")],
            extra_compile_args={"cxx": cxx_flags},
            extra_link_args=link_flags,
        )
        _log(f"building the CPU-only extension ({why_no_cuda})")
    build_ext = cpp_extension.BuildExtension.with_options(no_python_abi_suffix=False)
    return [ext], {"build_ext": _guarded_build_ext(build_ext)}


ext_modules, cmdclass = _extensions()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
