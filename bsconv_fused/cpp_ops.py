"""Python side of the compiled extension's ops: fake kernels and autograd for bsconv_fused::cpp_forward/cpp_backward.

The ops are declared in C++ (TORCH_LIBRARY in csrc/bsconv_fused.cpp) with CPU and, in CUDA builds, CUDA kernels.
Importing this module loads the extension (when it can) and registers the shared fake kernels and autograd of
ops.register_pair, so the ops work under torch.compile and backpropagate. When the extension is missing, importing
this module still works and ``available()`` is False (``bsconv_fused._ext.reason()`` says why).
"""
from __future__ import annotations

import threading
from typing import Optional

import torch

from . import _ext
from .ops import register_pair

_lock = threading.Lock()
_registered = False
_error: Optional[str] = None


def _register() -> None:
    global _registered, _error
    with _lock:
        if _registered or _error is not None:
            return
        if _ext.load() is None:
            _error = _ext.reason()
            return
        try:
            register_pair(torch.ops.bsconv_fused.cpp_forward.default, torch.ops.bsconv_fused.cpp_backward.default,
                          register_fake=True)
        except Exception as e:  # e.g. a torch whose torch.library lacks what register_pair uses
            _error = f"registering the fake kernels / autograd of the extension's ops failed: {type(e).__name__}: {e}"
            return
        _registered = True


def available() -> bool:
    """True when the extension loaded and its ops have fake kernels and autograd."""
    return _registered


def reason() -> str:
    """Why the extension's ops are unavailable ("" when they are)."""
    return _error or ""


def forward_op():
    """torch.ops.bsconv_fused.cpp_forward.default; raises RuntimeError with the reason when unavailable."""
    if not _registered:
        raise RuntimeError(f"the compiled extension's ops are unavailable: {reason()}")
    return torch.ops.bsconv_fused.cpp_forward.default


def backward_op():
    """torch.ops.bsconv_fused.cpp_backward.default; raises RuntimeError with the reason when unavailable."""
    if not _registered:
        raise RuntimeError(f"the compiled extension's ops are unavailable: {reason()}")
    return torch.ops.bsconv_fused.cpp_backward.default


_register()
