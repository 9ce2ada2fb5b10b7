"""Which fused backends exist here, why the others do not, and which one runs a given call.

Backends:
- "triton": the Triton kernels (bsconv_fused/triton). CUDA tensors; CPU tensors only under TRITON_INTERPRET=1
  (the interpreter: for tests, never picked by "auto").
- "cuda":   the compiled extension bsconv_fused._C: its CUDA kernels for CUDA tensors, its OpenMP kernels for CPU
  tensors.
- "torch":  the plain two-layer PyTorch path (bsconv_fused.reference); always available.

"auto" (the default) takes BSCONV_FUSED_BACKEND when set, else the first fused backend that can run the call, else
"torch" with one FallbackWarning per distinct reason. An explicitly requested backend that cannot run raises
BackendUnavailableError with the reason and the fix.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import torch

BACKENDS = ("triton", "cuda", "torch")
CHOICES = ("auto",) + BACKENDS
ENV_VAR = "BSCONV_FUSED_BACKEND"

# Order in which "auto" tries fused backends on a GPU. Triton first: its kernels are checked against the float64
# reference under the interpreter in CI, the CUDA kernels only compile there; revisit with GPU benchmark results.
GPU_PREFERENCE = ("triton", "cuda")

TRITON_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
EXT_CUDA_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
EXT_CPU_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


class FallbackWarning(UserWarning):
    """The fused path could not run and the plain two-layer PyTorch path ran instead."""


class BackendUnavailableError(RuntimeError):
    """An explicitly requested backend cannot run this call."""


@dataclass(frozen=True)
class BackendStatus:
    available: bool
    reason: str  # why it is unavailable, or what it runs on when available

    def __bool__(self) -> bool:
        return self.available


_warned: set = set()


def warn_once(reason: str, stacklevel: Optional[int] = None) -> None:
    """Warn once per distinct reason that the two-layer path runs instead of the fused one, attributed to the
    user's line (the first frame outside bsconv_fused and torch.nn's module machinery) unless ``stacklevel`` is
    given."""
    if reason in _warned or torch.compiler.is_compiling():
        return  # inside a traced region a warning would break the graph; the next eager call warns
    _warned.add(reason)
    warnings.warn(f"bsconv_fused: running the two-layer PyTorch path: {reason}", FallbackWarning,
                  stacklevel=stacklevel if stacklevel is not None else user_stacklevel())


_PKG_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep
_NN_DIR = os.path.join(os.path.dirname(os.path.abspath(torch.nn.__file__)), "modules") + os.sep


def user_stacklevel() -> int:
    """The stacklevel for warn_once's warnings.warn call that names the first frame outside this package and
    torch.nn.modules (Module.__call__ / _call_impl / Sequential): the user's own line."""
    import sys

    frame = sys._getframe(2)  # the caller of warn_once; level 2 from warnings.warn's point of view
    level = 2
    while frame is not None:
        fname = os.path.abspath(frame.f_code.co_filename)
        if not (fname.startswith(_PKG_DIR) or fname.startswith(_NN_DIR)):
            return level
        frame = frame.f_back
        level += 1
    return 2


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _probe_triton() -> Optional[str]:
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except Exception as e:  # ImportError, or a broken install raising anything at import
        return f"triton is not importable ({type(e).__name__}: {e}); install it with `pip install triton`"
    return None


# probed once at import (a plain global rather than lru_cache, which torch.compile warns about when tracing)
_TRITON_ERROR = _probe_triton()


def _triton_import_error() -> Optional[str]:
    return _TRITON_ERROR


def _probe_ext() -> Tuple[Optional[str], bool]:
    """(why the extension is unavailable or None, whether it has CUDA kernels). Never raises."""
    from . import _ext

    if _ext.load() is None:
        return _ext.reason(), False
    from . import cpp_ops  # noqa: F401  (fake kernels and autograd of the extension's ops)

    return None, _ext.has_cuda_kernels()


# Probed once at import, not lazily on the first call: that call may be inside torch.compile, which cannot trace the
# loader's lock or the dispatcher query; plain globals it can.
_EXT_ERROR, _EXT_HAS_CUDA = _probe_ext()


def _ext_reason() -> Optional[str]:
    return _EXT_ERROR


def triton_status() -> BackendStatus:
    err = _triton_import_error()
    if err:
        return BackendStatus(False, err)
    if torch.cuda.is_available():
        return BackendStatus(True, "Triton kernels on CUDA tensors")
    if interpreting():
        return BackendStatus(True, "Triton interpreter (TRITON_INTERPRET=1) on CPU tensors: for testing, slow")
    return BackendStatus(False, "no CUDA GPU is visible (Triton compiles for GPUs; TRITON_INTERPRET=1 runs the "
                                "kernels on CPU tensors for testing)")


def cuda_status() -> BackendStatus:
    err = _ext_reason()
    if err:
        return BackendStatus(False, err)
    if _EXT_HAS_CUDA:
        where = "CUDA kernels" + ("" if torch.cuda.is_available() else " (built; no GPU visible)")
        return BackendStatus(True, f"compiled extension: {where} and OpenMP CPU kernels")
    return BackendStatus(True, "compiled extension: OpenMP CPU kernels only (built without CUDA)")


def available_backends() -> Dict[str, BackendStatus]:
    """Each backend with whether it can run here and, if not, why."""
    return {
        "triton": triton_status(),
        "cuda": cuda_status(),
        "torch": BackendStatus(True, "plain two-layer PyTorch path (reference)"),
    }


def _why_not(name: str, x: torch.Tensor, geometry=None) -> Optional[str]:
    """None if backend ``name`` can run a call on tensors like ``x`` (and of ``geometry``), else why it cannot."""
    dev, dt = x.device.type, x.dtype
    if name == "torch":
        return None
    if name == "triton":
        err = _triton_import_error()
        if err:
            return err
        if dev == "cpu" and not interpreting():
            return "the Triton backend needs CUDA tensors (x is on the CPU; TRITON_INTERPRET=1 runs it on the CPU for testing)"
        if dev not in ("cuda", "cpu"):
            return f"the Triton backend runs on CUDA tensors, x is on {x.device}"
        if dt not in TRITON_DTYPES:
            return f"the Triton kernels support float16, bfloat16 and float32, not {dt}"
        if geometry is not None:
            from .triton.plan import unsupported_reason

            return unsupported_reason(geometry)
        return None
    if name == "cuda":
        err = _ext_reason()
        if err:
            return err
        if dev == "cuda":
            if not _EXT_HAS_CUDA:
                return "the compiled extension was built without CUDA kernels; rebuild with nvcc present: " \
                       "`pip install --no-build-isolation -e .`"
            if dt not in EXT_CUDA_DTYPES:
                return f"the CUDA kernels support float16, bfloat16 and float32, not {dt}"
            return None
        if dev == "cpu":
            if dt not in EXT_CPU_DTYPES:
                return f"the extension's CPU kernels support float32, float64, bfloat16 and float16, not {dt}"
            return None
        return f"the compiled extension runs on CPU and CUDA tensors, x is on {x.device}"
    raise AssertionError(name)


def choose(requested: str, x: torch.Tensor, geometry=None) -> str:
    """Resolve ``requested`` ("auto" or a backend name) to the backend that runs this call.

    geometry: the call's validated bsconv_fused._shapes.Geometry, for limits that depend on the layer."""
    if requested not in CHOICES:
        raise ValueError(f"backend must be one of {CHOICES}, got {requested!r}")
    from_env = False
    if requested == "auto":
        env = os.environ.get(ENV_VAR, "").strip()
        if env:
            if env not in CHOICES:
                raise ValueError(f"environment variable {ENV_VAR} must be one of {CHOICES}, got {env!r}")
            requested, from_env = env, env != "auto"
    if requested != "auto":
        why = _why_not(requested, x, geometry)
        if why is not None:
            if from_env:
                raise BackendUnavailableError(
                    f"backend {requested!r}, set by the environment variable {ENV_VAR}={requested}, cannot run this "
                    f"call: {why}. Unset {ENV_VAR} (or set it to 'auto') to fall back to the two-layer PyTorch path, "
                    "or see `python -m bsconv_fused` for what is available.")
            raise BackendUnavailableError(
                f"backend {requested!r} cannot run this call: {why}. Use backend='auto' to fall back to the "
                f"two-layer PyTorch path, or see `python -m bsconv_fused` for what is available.")
        return requested
    candidates = GPU_PREFERENCE if x.device.type == "cuda" else ("cuda",)
    reasons = []
    for name in candidates:
        why = _why_not(name, x, geometry)
        if why is None:
            return name
        reasons.append(f"{name}: {why}")
    if x.device.type == "cpu" and not torch.cuda.is_available():
        reasons.insert(0, "no GPU")
    warn_once("; ".join(reasons))
    return "torch"
