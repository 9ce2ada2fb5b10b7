"""The one loader of the compiled extension bsconv_fused._C: import it once, register its ops' fake kernels and
autograd, and keep why it is unavailable when it is.

Importing bsconv_fused never fails because of _C. The import runs once, at import of this module (not lazily on a
first call, which may be inside torch.compile: the compiler cannot trace an import or a dispatcher query), and the
reason (never built, built for another torch, missing CUDA runtime, built without CUDA, ...) is kept with the command
that rebuilds it.

Importing _C runs its TORCH_LIBRARY registrations: bsconv_fused::cpp_forward / cpp_backward with CPU kernels always
(the "cpu" backend) and CUDA kernels when it was built with nvcc (the "cuda" backend).
"""
from __future__ import annotations

import importlib
import os
from types import ModuleType
from typing import Optional

import torch

_PKG_DIR = os.path.dirname(os.path.abspath(__file__))
_SRC_ROOT = os.path.dirname(_PKG_DIR)


def rebuild_command() -> str:
    """The command that (re)builds the extension against the torch imported now."""
    if os.path.exists(os.path.join(_SRC_ROOT, "setup.py")) and os.path.isdir(os.path.join(_SRC_ROOT, "csrc")):
        return f"cd {_SRC_ROOT} && pip install --no-build-isolation -e ."
    return "pip install --no-build-isolation --no-deps --force-reinstall --no-binary bsconv_fused bsconv_fused"


def _explain(exc: BaseException) -> str:
    msg = str(exc)
    fix = f"rebuild it with `{rebuild_command()}`"
    if isinstance(exc, ModuleNotFoundError) and getattr(exc, "name", None) == "bsconv_fused._C":
        note = os.path.join(_PKG_DIR, "_build_failed.txt")  # written by setup.py when it could not compile
        if os.path.exists(note):
            with open(note) as f:
                return f.read().strip()
        return ("the compiled extension bsconv_fused._C is not built (installed with BSCONV_FUSED_SKIP_BUILD=1, "
                f"without a compiler, or without torch importable at build time); build it with `{rebuild_command()}`")
    if "undefined symbol" in msg or "version `" in msg:
        return (f"bsconv_fused._C was built for another torch than the one imported ({torch.__version__}): {msg}; "
                f"{fix}")
    if isinstance(exc, (ImportError, OSError)) and ("libcudart" in msg or "libc10_cuda" in msg
                                                    or "libtorch_cuda" in msg):
        return (f"bsconv_fused._C needs CUDA libraries this torch does not have ({msg}): it was built with CUDA "
                f"against a CUDA build of torch, and torch {torch.__version__} is "
                f"{'a CPU-only build' if torch.version.cuda is None else 'different'}; {fix}")
    return f"bsconv_fused._C failed to load ({type(exc).__name__}: {msg}); {fix}"


def _load():
    """(module or None, reason, note, has CUDA kernels). Never raises."""
    try:
        module = importlib.import_module("bsconv_fused._C")
    except Exception as e:  # ImportError, OSError from the loader, or anything a registration raises
        return None, _explain(e), "", False
    note = ""
    built = getattr(module, "BUILT_WITH_TORCH", "unknown")
    if built not in ("unknown", torch.__version__.split("+")[0]):
        # It imported, so the ABI matched well enough; say so anyway, mismatches fail in subtle ways.
        note = (f"bsconv_fused._C was built with torch {built} but torch {torch.__version__} is imported; "
                f"if anything misbehaves, rebuild with `{rebuild_command()}`")
    try:
        from .ops import register_pair

        register_pair(torch.ops.bsconv_fused.cpp_forward.default, torch.ops.bsconv_fused.cpp_backward.default,
                      register_fake=True)
    except Exception as e:  # e.g. a torch whose torch.library lacks what register_pair uses
        return None, (f"registering the fake kernels / autograd of the extension's ops failed: "
                      f"{type(e).__name__}: {e}"), note, False
    has_cuda = bool(getattr(module, "WITH_CUDA", 0)) and torch._C._dispatch_has_kernel_for_dispatch_key(
        "bsconv_fused::cpp_forward", "CUDA")
    return module, "", note, has_cuda


_MODULE, _REASON, _NOTE, _HAS_CUDA = _load()


def load() -> Optional[ModuleType]:
    """The extension module, or None when it cannot be imported (see :func:`reason`)."""
    return _MODULE


def available() -> bool:
    """True when the extension loaded and its ops have fake kernels and autograd."""
    return _MODULE is not None


def reason() -> str:
    """Why the extension is unavailable ("" when it loaded), with the command that fixes it."""
    return _REASON


def note() -> str:
    """A caveat about a loaded extension (e.g. built with another torch release), or ""."""
    return _NOTE


def has_cuda_kernels() -> bool:
    """True when the loaded extension was built with nvcc and registered CUDA kernels for its ops."""
    return _HAS_CUDA


def cuda_reason() -> str:
    """Why the extension has no CUDA kernels ("" when it has them)."""
    if _MODULE is None:
        return _REASON
    if _HAS_CUDA:
        return ""
    return ("bsconv_fused._C was built without CUDA kernels (torch without CUDA, nvcc not found, or "
            f"BSCONV_FUSED_CPU_ONLY=1 at build time); with nvcc present (CUDA_HOME) rebuild with "
            f"`{rebuild_command()}`")


def forward_op():
    """torch.ops.bsconv_fused.cpp_forward.default; raises RuntimeError with the reason when unavailable."""
    if _MODULE is None:
        raise RuntimeError(f"the compiled extension's ops are unavailable: {_REASON}")
    return torch.ops.bsconv_fused.cpp_forward.default


def backward_op():
    """torch.ops.bsconv_fused.cpp_backward.default; raises RuntimeError with the reason when unavailable."""
    if _MODULE is None:
        raise RuntimeError(f"the compiled extension's ops are unavailable: {_REASON}")
    return torch.ops.bsconv_fused.cpp_backward.default
