"""Loads the compiled extension bsconv_fused._C and records why it is unavailable when it is.

Importing bsconv_fused never fails because of _C: the import is attempted once, lazily, inside a try/except, and
the reason (never built, built for another torch, missing CUDA runtime, built without CUDA, ...) is kept together
with the command that rebuilds it. bsconv_fused.backends reports it for the "cuda" backend.

Importing _C runs its TORCH_LIBRARY registrations: the ops bsconv_fused::cpp_forward / cpp_backward, with CPU
kernels always and CUDA kernels when it was built with nvcc (``has_cuda_kernels()``).
"""
from __future__ import annotations

import importlib
import os
import threading
from types import ModuleType
from typing import Optional

import torch

_lock = threading.Lock()
_state: dict = {}  # "module": Optional[ModuleType], "reason": str, "note": str (set once load() ran)

_PKG_DIR = os.path.dirname(os.path.abspath(__file__))
_SRC_ROOT = os.path.dirname(_PKG_DIR)


def rebuild_command() -> str:
    """The command that (re)builds the extension against the torch imported now."""
    if os.path.exists(os.path.join(_SRC_ROOT, "setup.py")) and os.path.isdir(os.path.join(_SRC_ROOT, "csrc")):
        return f"cd {_SRC_ROOT} && pip install --no-build-isolation -e ."
    return "pip install --no-build-isolation --no-deps --force-reinstall --no-binary bsconv_fused bsconv_fused"


def _torch_release() -> str:
    return torch.__version__.split("+")[0]


def _explain(exc: BaseException) -> str:
    msg = str(exc)
    fix = f"rebuild it with `{rebuild_command()}`"
    if isinstance(exc, ModuleNotFoundError) and getattr(exc, "name", None) == "bsconv_fused._C":
        note = os.path.join(_PKG_DIR, "_build_failed.txt")  # written by setup.py when it could not compile
        if os.path.exists(note):
            with open(note) as f:
                return f.read().strip()
        return ("the compiled extension bsconv_fused._C is not built (installed with BSCONV_FUSED_SKIP_BUILD=1, or "
                f"without torch importable at build time); build it with `{rebuild_command()}`")
    if "undefined symbol" in msg or "version `" in msg:
        return (f"bsconv_fused._C was built for another torch than the one imported ({torch.__version__}): {msg}; "
                f"{fix}")
    if isinstance(exc, (ImportError, OSError)) and ("libcudart" in msg or "libc10_cuda" in msg
                                                    or "libtorch_cuda" in msg):
        return (f"bsconv_fused._C needs CUDA libraries this torch does not have ({msg}): it was built with CUDA "
                f"against a CUDA build of torch, and torch {torch.__version__} is "
                f"{'a CPU-only build' if torch.version.cuda is None else 'different'}; {fix}")
    return f"bsconv_fused._C failed to load ({type(exc).__name__}: {msg}); {fix}"


def _load_locked() -> None:
    if "reason" in _state:
        return
    module: Optional[ModuleType] = None
    note = ""
    try:
        module = importlib.import_module("bsconv_fused._C")
    except Exception as e:  # ImportError, OSError from the loader, or anything a registration raises
        reason = _explain(e)
    else:
        built = getattr(module, "BUILT_WITH_TORCH", "unknown")
        reason = ""
        if built != "unknown" and built != _torch_release():
            # It imported, so the ABI matched well enough; say so anyway, mismatches fail in subtle ways.
            note = (f"bsconv_fused._C was built with torch {built} but torch {torch.__version__} is imported; "
                    f"if anything misbehaves, rebuild with `{rebuild_command()}`")
    _state.update(module=module, reason=reason, note=note)


def load() -> Optional[ModuleType]:
    """The extension module, or None when it cannot be imported (see :func:`reason`). Tried once per process."""
    if "reason" not in _state:
        with _lock:
            _load_locked()
    return _state["module"]


def reason() -> str:
    """Why the extension is unavailable ("" when it loaded), with the command that fixes it."""
    load()
    return _state["reason"]


def note() -> str:
    """A caveat about a loaded extension (e.g. built with another torch release), or ""."""
    load()
    return _state["note"]


def has_cuda_kernels() -> bool:
    """True when the loaded extension was built with nvcc and registered CUDA kernels for its ops."""
    module = load()
    if module is None or not getattr(module, "WITH_CUDA", 0):
        return False
    return torch._C._dispatch_has_kernel_for_dispatch_key("bsconv_fused::cpp_forward", "CUDA")


def cuda_reason() -> str:
    """Why the extension has no CUDA kernels ("" when it has them)."""
    if load() is None:
        return reason()
    if has_cuda_kernels():
        return ""
    return ("bsconv_fused._C was built without CUDA kernels (torch without CUDA, nvcc not found, or "
            f"BSCONV_FUSED_CPU_ONLY=1 at build time); with nvcc present (CUDA_HOME) rebuild with "
            f"`{rebuild_command()}`")
