"""Which fused backends exist here, why the others do not, and which one runs a given call: a table of backends.

| backend  | runs on      | what                                                                           |
|----------|--------------|--------------------------------------------------------------------------------|
| "triton" | CUDA tensors | the Triton kernels (bsconv_fused/triton); CPU tensors only under TRITON_INTERPRET=1 (tests; never "auto") |
| "cuda"   | CUDA tensors | the compiled extension's CUDA kernels (bsconv_fused._C, csrc/cuda)            |
| "cpu"    | CPU tensors  | the compiled extension's CPU kernels (bsconv_fused._C, csrc/cpu)              |
| "torch"  | anything     | the plain two-layer PyTorch path (bsconv_fused.reference); always available   |

"auto" (the default) takes BSCONV_FUSED_BACKEND when set, else the first fused backend for the tensors' device that
can run the call and is not predicted to lose against the two-layer path for this layer (then "torch" runs, on
purpose, without a warning: ``explain()`` says why), else "torch" with one FallbackWarning per distinct reason.
An explicitly requested backend that cannot run the call raises BackendUnavailableError with the reason and the fix.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Tuple

import torch

from . import _ext

ENV_VAR = "BSCONV_FUSED_BACKEND"


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


# probed once at import (a plain global: torch.compile cannot trace an import inside a call)
_TRITON_ERROR = _probe_triton()

# The cost policies, resolved once at import for the same reason. Each says why "auto" should prefer the two-layer
# path for a layer: the Triton plan's static cost model (forward_loses / backward_loses) and the CPU kernels'
# measured policy (cpu_policy.cpu_kernels_lose). A policy that is absent predicts nothing.
try:
    from .cpu_policy import cpu_kernels_lose as _CPU_LOSES
except ImportError:
    _CPU_LOSES = None
if _TRITON_ERROR is None:
    from .triton import plan as _TRITON_PLAN
else:
    _TRITON_PLAN = None
# The extension's CUDA kernels: a static review of their compiled code predicts them slower than the two-layer cuDNN
# path on every layer of the suite (docs/cuda-kernels.md), so "auto" does not pick them; backend="cuda" still runs
# them. Revisit with the static report's cuda rows or a GPU measurement.
CUDA_KERNELS_LOSE = ("the extension's CUDA kernels are predicted slower than the two-layer cuDNN path "
                     "(docs/cuda-kernels.md); backend='cuda' runs them anyway")
_TRITON_FWD_LOSES = getattr(_TRITON_PLAN, "forward_loses", None)
_TRITON_BWD_LOSES = getattr(_TRITON_PLAN, "backward_loses", None)


# ------------------------------------------------------------------------------------- per-backend rules
def _triton_status() -> Optional[str]:
    if _TRITON_ERROR:
        return _TRITON_ERROR
    if not torch.cuda.is_available() and not interpreting():
        return ("no CUDA GPU is visible (Triton compiles for GPUs; TRITON_INTERPRET=1 runs the kernels on CPU "
                "tensors for testing)")
    return None


def _triton_call(x: torch.Tensor, g) -> Optional[str]:
    dev = x.device.type
    if dev == "cpu" and not interpreting():
        return ("the Triton backend needs CUDA tensors (x is on the CPU; TRITON_INTERPRET=1 runs it on the CPU "
                "for testing)")
    if dev not in ("cuda", "cpu"):
        return f"the Triton backend runs on CUDA tensors, x is on {x.device}"
    if g is not None and _TRITON_PLAN is not None:
        return _TRITON_PLAN.unsupported_reason(g)
    return None


def _cuda_status() -> Optional[str]:
    if not _ext.available():
        return _ext.reason()
    if not _ext.has_cuda_kernels():
        return _ext.cuda_reason()
    if not torch.cuda.is_available():
        return "no CUDA GPU is visible (the extension's CUDA kernels are built)"
    return None


def _cuda_call(x: torch.Tensor, g) -> Optional[str]:
    if x.device.type != "cuda":
        return f"the cuda backend runs the CUDA kernels on CUDA tensors, x is on {x.device} (use backend='cpu')"
    if g is None:
        major, minor = torch.cuda.get_device_capability(x.device)
        if major < 8:
            return (f"the extension's CUDA kernels need compute capability 8.0 or newer (Ampere), "
                    f"{torch.cuda.get_device_name(x.device)} is {major}.{minor}")
        return None
    # the kernels' own planner answers (device generation, dtype, shared-memory fit, int32 limits): a call they
    # would refuse is known before launch, and "auto" falls back instead of raising
    return _cuda_refusal(g.N, g.C_in, g.C_out, g.H, g.W, (g.kh, g.kw), g.stride, g.padding, g.dilation, x.dtype,
                         x.device.index if x.device.index is not None else torch.cuda.current_device()) or None


def _cuda_refusal(N, C_in, C_out, H, W, k, stride, padding, dilation, dtype, device) -> str:
    op = getattr(torch.ops.bsconv_fused, "cuda_refusal", None)
    if op is None:
        return "the compiled extension predates the cuda_refusal query; rebuild it: `" + _ext.rebuild_command() + "`"
    return op(N, C_in, C_out, H, W, list(k), list(stride), list(padding), list(dilation), dtype, device)


# torch.compile cannot trace a query that returns a string or an int into a graph: such queries are evaluated once,
# at trace time, as constants (the cuda_refusal answer below, the CPU thread count further down)
_assume_constant = getattr(getattr(torch, "_dynamo", None), "assume_constant_result", None)
if _assume_constant is not None:
    _cuda_refusal = _assume_constant(_cuda_refusal)


def _cpu_status() -> Optional[str]:
    return None if _ext.available() else _ext.reason()


def _cpu_call(x: torch.Tensor, g) -> Optional[str]:
    if x.device.type != "cpu":
        return f"the cpu backend runs the extension's CPU kernels on CPU tensors, x is on {x.device}"
    return None


def _triton_forward_op():
    from . import ops

    return ops.triton_forward


@dataclass(frozen=True)
class Backend:
    """One fused backend: where it runs, what it supports, why it cannot, and its forward op."""

    name: str
    device: str  # the tensors' device type "auto" considers it for
    dtypes: Tuple[torch.dtype, ...]
    why_unavailable: Callable[[], Optional[str]]  # here at all (installed, built, a device present)
    why_not_call: Callable[[torch.Tensor, object], Optional[str]]  # this call (device, geometry limits)
    forward_op: Callable[[], object]
    runs_on: str  # what it runs, for available_backends()


_HALF = (torch.float16, torch.bfloat16, torch.float32)
TABLE: Dict[str, Backend] = {
    b.name: b for b in (
        Backend("triton", "cuda", _HALF, _triton_status, _triton_call, _triton_forward_op,
                "Triton kernels on CUDA tensors"),
        Backend("cuda", "cuda", _HALF, _cuda_status, _cuda_call, _ext.forward_op,
                "the compiled extension's CUDA kernels on CUDA tensors"),
        Backend("cpu", "cpu", _HALF + (torch.float64,), _cpu_status, _cpu_call, _ext.forward_op,
                "the compiled extension's CPU kernels on CPU tensors"),
    )
}
BACKENDS = tuple(TABLE) + ("torch",)
CHOICES = ("auto",) + BACKENDS

# Order in which "auto" tries fused backends per device. On GPUs Triton first: its numerics are checked against the
# float64 reference under the interpreter in CI and its kernels are the ones the static cost model covers.
AUTO_ORDER = {"cuda": ("triton", "cuda"), "cpu": ("cpu",)}


def available_backends() -> Dict[str, BackendStatus]:
    """Each backend with whether it can run here and, if not, why."""
    out = {}
    for name, b in TABLE.items():
        why = b.why_unavailable()
        if why is None and name == "triton" and not torch.cuda.is_available():
            out[name] = BackendStatus(True, "Triton interpreter (TRITON_INTERPRET=1) on CPU tensors: for testing, slow")
        else:
            out[name] = BackendStatus(why is None, why or b.runs_on)
    out["torch"] = BackendStatus(True, "plain two-layer PyTorch path (reference)")
    return out


def why_not(name: str, x: torch.Tensor, geometry=None) -> Optional[str]:
    """None if backend ``name`` can run a call on tensors like ``x`` (of ``geometry``), else why it cannot."""
    if name == "torch":
        return None
    b = TABLE[name]
    why = b.why_unavailable()
    if why is not None:
        return why
    if x.dtype not in b.dtypes:
        names = ", ".join(str(d).replace("torch.", "") for d in b.dtypes)
        return f"the {name} backend supports {names}, not {str(x.dtype).replace('torch.', '')}"
    return b.why_not_call(x, geometry)


def predicted_loss(name: str, x: torch.Tensor, geometry, training: bool) -> Optional[str]:
    """Why the fused backend is predicted (static cost model or CPU measurements) to be slower than the two-layer
    path for this layer, or None. "auto" then runs the two-layer path; an explicit request still runs fused."""
    if geometry is None:
        return None
    if name == "cpu":
        return _CPU_LOSES(geometry, x.dtype, _num_threads()) if _CPU_LOSES is not None else None
    if name == "cuda":
        return CUDA_KERNELS_LOSE
    if name == "triton" and x.device.type == "cuda":
        # the layout matters to the kernels' cost (channels_last loads whole channel vectors); grad_y takes y's
        # layout, which is x's
        cl = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
        why = _TRITON_FWD_LOSES(geometry, x.dtype, channels_last=cl) if _TRITON_FWD_LOSES is not None else None
        if why is None and training and _TRITON_BWD_LOSES is not None:
            why = _TRITON_BWD_LOSES(geometry, x.dtype, channels_last=cl)
        return why
    return None


def _num_threads() -> int:
    return torch.get_num_threads()


# (under torch.compile a later torch.set_num_threads only matters to the choice when the function recompiles)
if _assume_constant is not None:
    _num_threads = _assume_constant(_num_threads)


def _requested(requested: str) -> Tuple[str, str]:
    """(backend name, where it came from) after applying BSCONV_FUSED_BACKEND to "auto"."""
    if requested not in CHOICES:
        raise ValueError(f"backend must be one of {CHOICES}, got {requested!r}")
    if requested == "auto":
        env = os.environ.get(ENV_VAR, "").strip()
        if env:
            if env not in CHOICES:
                raise ValueError(f"environment variable {ENV_VAR} must be one of {CHOICES}, got {env!r}")
            return env, f"environment variable {ENV_VAR}={env}"
    return requested, f"backend={requested!r}"


@dataclass(frozen=True)
class Choice:
    """The backend that runs a call, why, and whether the two-layer path runs because nothing fused could."""

    backend: str
    reason: str
    fallback: bool = False


def explain(requested: str, x: torch.Tensor, geometry=None, training: Optional[bool] = None) -> Choice:
    """Which backend runs this call and why. Never warns; raises like :func:`choose` for an impossible request."""
    name, source = _requested(requested)
    if training is None:
        training = torch.is_grad_enabled()
    if name != "auto":
        why = why_not(name, x, geometry)
        if why is not None:
            origin = f" (from {source})" if source.startswith("environment") else ""
            hint = f"unset {ENV_VAR} or set it to 'auto'" if origin else "use backend='auto'"
            raise BackendUnavailableError(
                f"backend {name!r}{origin} cannot run this call: {why}. To fall back to the two-layer PyTorch path, "
                f"{hint}; `python -m bsconv_fused` says what is available.")
        return Choice(name, f"requested by {source}")
    order = AUTO_ORDER.get(x.device.type, ())
    reasons, loses = [], []
    for cand in order:
        why = why_not(cand, x, geometry)
        if why is not None:
            reasons.append(f"{cand}: {why}")
            continue
        lose = predicted_loss(cand, x, geometry, training)
        if lose is None:
            return Choice(cand, f"the first fused backend for {x.device.type} tensors that runs this call")
        loses.append(f"{cand} is predicted slower than the two-layer path here: {lose}")
    if not order:
        reasons.append(f"no fused backend runs on {x.device.type} tensors")
    # A warning only when the preferred backend could not run at all (not installed, no GPU, unsupported dtype):
    # the two-layer path chosen because fusion is predicted to lose is a decision, not a failure.
    preferred_missing = bool(reasons) and (not order or reasons[0].startswith(f"{order[0]}: "))
    return Choice("torch", "; ".join(reasons + loses), fallback=preferred_missing)


def choose(requested: str, x: torch.Tensor, geometry=None, stacklevel: Optional[int] = None) -> str:
    """Resolve ``requested`` ("auto" or a backend name) to the backend that runs this call.

    geometry: the call's validated bsconv_fused._shapes.Geometry, for limits that depend on the layer. Warns once
    per reason when "auto" falls back because no fused backend can run the call (not when the two-layer path is
    chosen because it is predicted faster)."""
    c = explain(requested, x, geometry)
    if c.fallback:
        warn_once(c.reason, stacklevel=stacklevel)
    return c.backend
