"""Parity machinery shared by the test suite and the benchmark's parity check: cases, inputs, the float64 oracle,
the tolerance rule, and a recorder that proves which kernel ran.

The tolerance rule (flash-attention's): a fused result must be within twice the error that the two-layer PyTorch
path makes *in the same dtype, on the same device, on the same inputs*, plus a floor, both measured against a
float64 reference of those inputs:

    err(fused) <= min(2 * err(two-layer, same dtype) + FLOOR[dtype, tf32], CAP[dtype, tf32])

Errors are max|a - ref| / max(1, max|ref|) per tensor (y and every gradient). Why this rule and these values:
- It adapts to the precision actually in force: on a GPU fp32 convolutions run in TF32 by default (cuDNN's
  allow_tf32), and the two-layer path's own error then is ~5e-4, which a fixed 1e-4 would reject; on the CPU the
  same fp32 error is ~1e-7 and the bound stays tight (a kernel that rounded the intermediate to bf16, ~4e-3, fails).
- FLOOR covers what the fused path does differently by design, measured on the CPU (interpreter and OpenMP kernels,
  tests/test_parity.py cases): fp32 ieee fused 2-3e-7 vs two-layer 0.5-2e-7 -> floor 1e-6; fp16 fused 3-5e-4, the
  fused path keeps t in fp32 but rounds dt to fp16 for the tensor cores -> floor 1e-3; bf16 the Triton interpreter
  truncates instead of rounding on fp32->bf16 (one extra 2^-8 relative step) -> floor 8e-3; fp64 -> 1e-12.
- CAP keeps a broken two-layer path (or a huge case) from inflating the bound: it is the largest error any of these
  formats could excuse for a single rounding of the output and of dt (fp32 ieee 1e-4, TF32 5e-3, fp16 1e-2,
  bf16 5e-2).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from .activation import apply as apply_activation
from .reference import bsconv_u_reference

GRAD_NAMES = ("x", "pw_weight", "dw_weight", "bias", "mid_bias")

# (dtype, tf32) -> (floor, cap); see the module docstring for where each number comes from
TOLERANCE: Dict[Tuple[torch.dtype, bool], Tuple[float, float]] = {
    (torch.float64, False): (1e-12, 1e-9),
    (torch.float32, False): (1e-6, 1e-4),
    (torch.float32, True): (5e-4, 5e-3),
    (torch.float16, False): (1e-3, 1e-2),
    (torch.bfloat16, False): (8e-3, 5e-2),
}

# The coverage every backend's parity tests walk
KERNELS = [(1, 1), (2, 2), (3, 3), (4, 4), (5, 5), (6, 6), (7, 7), (1, 3), (3, 1), (2, 5), (7, 2)]
STRIDE_PADDING_DILATION = [
    ((2, 2), (1, 1), (1, 1)),
    ((1, 2), (0, 1), (1, 1)),
    ((3, 3), (2, 0), (1, 1)),
    ((1, 1), (0, 0), (1, 1)),
    ((1, 1), (2, 2), (2, 2)),
    ((2, 1), (1, 3), (1, 3)),
    ((2, 2), (3, 3), (1, 1)),  # padding beyond the kernel reach: border outputs see only the biases
    ((4, 3), (0, 0), (1, 1)),  # stride larger than the kernel: some t rows/columns feed no output (dx = 0 there)
]

# the custom ops each fused backend's forward and backward go through (bsconv_fused/ops.py, csrc/bsconv_fused.cpp)
BACKEND_OPS = {
    "triton": ("bsconv_fused.triton_forward.default", "bsconv_fused.triton_backward.default"),
    "cpu": ("bsconv_fused.cpp_forward.default", "bsconv_fused.cpp_backward.default"),
    "cuda": ("bsconv_fused.cpp_forward.default", "bsconv_fused.cpp_backward.default"),
}


def fused_targets() -> List[Tuple[str, str]]:
    """(backend, device) for every fused backend that can run here: Triton on the GPU, or through the interpreter
    on the CPU when TRITON_INTERPRET=1; the extension's CPU kernels; its CUDA kernels with a GPU."""
    from . import backends

    status = backends.available_backends()
    out = []
    for name, b in backends.TABLE.items():
        if status[name].available:
            on_cpu = name == "triton" and not torch.cuda.is_available()  # the interpreter
            out.append((name, "cpu" if on_cpu else b.device))
    return out


def tf32_in_force(dtype: torch.dtype, device) -> bool:
    """Whether fp32 convolutions on ``device`` run in TF32 (cuDNN's default on GPUs), as the fused kernels follow."""
    return (dtype == torch.float32 and torch.device(device).type == "cuda"
            and bool(torch.backends.cudnn.allow_tf32))


def tolerance(dtype: torch.dtype, tf32: bool, err_two_layer: float) -> float:
    floor, cap = TOLERANCE[(dtype, tf32 and dtype == torch.float32)]
    return min(2.0 * err_two_layer + floor, cap)


@dataclass
class Case:
    N: int = 1
    C_in: int = 5
    C_out: int = 20
    H: int = 9
    W: int = 11
    k: Tuple[int, int] = (3, 3)
    stride: Tuple[int, int] = (1, 1)
    padding: Tuple[int, int] = (1, 1)
    dilation: Tuple[int, int] = (1, 1)
    bias: bool = True
    mid: bool = True
    layout: str = "nchw"  # "nchw" | "channels_last" | "sliced"
    grad_layout: str = "contiguous"  # "contiguous" | "transposed" | "expanded"
    requires: Tuple[bool, ...] = (True, True, True, True, True)
    dtype: torch.dtype = torch.float32
    extra: dict = field(default_factory=dict)
    # the forward's activation (bsconv_fused/activation.py): passed to fn as activation=... unless "none", applied
    # to every reference
    activation: str = "none"

    def __str__(self):
        return (f"N{self.N} {self.C_in}->{self.C_out} {self.H}x{self.W} k{self.k} s{self.stride} p{self.padding} "
                f"d{self.dilation} b{int(self.bias)}m{int(self.mid)} {self.layout} {self.grad_layout} "
                f"{str(self.dtype)[6:]}" + (f" {self.activation}" if self.activation != "none" else ""))


def make_inputs(c: Case, device, generator: Optional[torch.Generator] = None):
    """Inputs of case c on device: x in the requested layout, leaves with requires_grad as asked."""
    dt = c.dtype

    def randn(*shape):
        return torch.randn(*shape, generator=generator).to(device=device, dtype=dt)

    if c.layout == "sliced":
        # a channel slice of a wider tensor and a spatial step: strides no kernel may assume away
        wide = randn(c.N, c.C_in + 3, c.H + 1, 2 * c.W)
        x = wide[:, 2:2 + c.C_in, 1:, ::2]
    else:
        x = randn(c.N, c.C_in, c.H, c.W)
        if c.layout == "channels_last":
            x = x.contiguous(memory_format=torch.channels_last)
    pw = randn(c.C_out, c.C_in, 1, 1) / c.C_in ** 0.5
    dw = randn(c.C_out, 1, *c.k) / (c.k[0] * c.k[1]) ** 0.5
    bias = randn(c.C_out) if c.bias else None
    mid = randn(c.C_out) if c.mid else None
    leaves = [x, pw, dw, bias, mid]
    for t, r in zip(leaves, c.requires):
        if t is not None and r:
            t.requires_grad_(True)
    return leaves


def make_grad(c: Case, y: torch.Tensor) -> torch.Tensor:
    """grad_output in the case's layout: contiguous, transposed (H and W strides swapped) or expanded (stride 0)."""
    if c.grad_layout == "expanded":  # what y.sum().backward() produces: stride 0 everywhere
        return torch.randn((), dtype=y.dtype, device=y.device).expand_as(y)
    if c.grad_layout == "transposed":
        return torch.randn(y.shape[0], y.shape[1], y.shape[3], y.shape[2], dtype=y.dtype,
                           device=y.device).transpose(2, 3)
    return torch.randn_like(y, memory_format=torch.contiguous_format)


def rel_err(a: torch.Tensor, ref: torch.Tensor) -> float:
    return (a.double() - ref.double()).abs().max().item() / max(1.0, ref.double().abs().max().item())


class OpRecorder(TorchDispatchMode):
    """Records every bsconv_fused custom op dispatched inside it, and counts Triton kernel launches.

    A test that expects a fused backend asserts both: the op pair of that backend was called (so no layer above
    routed the call to the two-layer path), and, for Triton, that kernels were launched (so the op itself did not)."""

    def __init__(self):
        super().__init__()
        self.ops: List[str] = []
        self.calls: List[Tuple[str, tuple, dict]] = []  # (op, args, kwargs) of every recorded op
        self.triton_launches = 0
        self.triton_meta: List[dict] = []  # the compile-time parameters of every Triton launch

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if getattr(func, "namespace", "") == "bsconv_fused":
            self.ops.append(str(func))
            self.calls.append((str(func), tuple(args), dict(kwargs or {})))
        return func(*args, **(kwargs or {}))

    def forward_activations(self) -> List[int]:
        """The activation code each recorded forward op received (0 where the argument was left at its default)."""
        out = []
        for name, args, kwargs in self.calls:
            if name.endswith("_forward.default"):
                out.append(int(args[8]) if len(args) > 8 else int(kwargs.get("activation", 0)))
        return out

    def __enter__(self):
        try:
            from .triton import launch
        except Exception:  # no Triton: nothing to count
            self._launch = None
        else:
            self._launch, self._run = launch, launch.Launch.run
            run = self._run

            def counted(launch_self):
                self.triton_launches += 1
                self.triton_meta.append(dict(launch_self.meta))
                return run(launch_self)

            launch.Launch.run = counted
        return super().__enter__()

    def __exit__(self, *exc):
        try:
            return super().__exit__(*exc)
        finally:
            if self._launch is not None:
                self._launch.Launch.run = self._run

    def assert_ran(self, backend: str, forward: bool = True, backward: bool = True) -> None:
        fwd, bwd = BACKEND_OPS[backend]
        if forward:
            assert fwd in self.ops, f"the {backend} forward op did not run (ops seen: {self.ops})"
        if backward:
            assert bwd in self.ops, f"the {backend} backward op did not run (ops seen: {self.ops})"
        if backend == "triton":
            assert self.triton_launches > 0, "the Triton op ran but launched no kernel"


def reference64(c: Case, leaves, gy: Optional[torch.Tensor]):
    """y and the requested gradients of the two-layer path in float64 on the same (already rounded) inputs."""
    d = lambda t: None if t is None else t.detach().double().requires_grad_(t.requires_grad)  # noqa: E731
    rleaves = [d(t) for t in leaves]
    rx, rpw, rdw, rb, rm = rleaves
    ref = apply_activation(bsconv_u_reference(rx, rpw, rdw, rb, c.stride, c.padding, c.dilation, mid_bias=rm),
                           c.activation)
    grads = {}
    want = [(n, r) for n, r in zip(GRAD_NAMES, rleaves) if r is not None and r.requires_grad]
    if want and gy is not None:
        for (n, _), g in zip(want, torch.autograd.grad(ref, [r for _, r in want], gy.double())):
            grads[n] = g
    return ref, grads


def _run(fn: Callable, c: Case, leaves, gy_fn) -> Tuple[torch.Tensor, Dict[str, torch.Tensor], torch.Tensor]:
    x, pw, dw, bias, mid = leaves
    act = {} if c.activation == "none" else {"activation": c.activation}
    y = fn(x, pw, dw, bias, c.stride, c.padding, c.dilation, mid_bias=mid, **act)
    gy = gy_fn(y)
    want = [(n, t) for n, t in zip(GRAD_NAMES, leaves) if t is not None and t.requires_grad]
    grads = {}
    if want:
        for (n, _), g in zip(want, torch.autograd.grad(y, [t for _, t in want], gy)):
            grads[n] = g
    return y, grads, gy


@dataclass
class Measurement:
    """What :func:`measure` found for one case: errors and tolerances by tensor name ("y" and the gradients), the
    contract violations it saw (shape, dtype, layout, missing gradients), and the ops that ran."""

    errs: Dict[str, float]
    tols: Dict[str, float]
    problems: List[str]
    rec: OpRecorder

    def over(self) -> Dict[str, Tuple[float, float]]:
        """(err, tol) of every tensor above its tolerance."""
        return {k: (self.errs[k], self.tols[k]) for k in self.errs if not self.errs[k] <= self.tols[k]}


def measure(c: Case, fn: Callable, device, *, generator: Optional[torch.Generator] = None) -> Measurement:
    """Run fn(x, pw, dw, bias, stride, padding, dilation, mid_bias=...[, activation=...]) on case c, the two-layer
    path on the same inputs in the same dtype, and the float64 oracle (both with c.activation applied); return
    the errors, the tolerances of the rule above and the contract violations. Raises only what fn raises.
    :func:`check` (tests) asserts on it; the main job's parity report (bsconv_fused.bench.parity) turns it into a
    status line."""
    leaves = make_inputs(c, device, generator)
    gy_holder = {}

    def gy_fn(y):
        if "gy" not in gy_holder:
            gy_holder["gy"] = make_grad(c, y)
        return gy_holder["gy"]

    rec = OpRecorder()
    with rec:
        y, grads, gy = _run(fn, c, leaves, gy_fn)
    # the same dtype through the two-layer path, for the tolerance rule (fresh leaves: same values)
    same = [None if t is None else t.detach().clone().requires_grad_(t.requires_grad) for t in leaves]
    y2, grads2, _ = _run(lambda *a, activation="none", **k: apply_activation(bsconv_u_reference(*a, **k), activation),
                         c, same, gy_fn)
    ref, rgrads = reference64(c, leaves, gy)

    problems = []
    if y.shape != ref.shape:
        problems.append(f"y has shape {tuple(y.shape)}, expected {tuple(ref.shape)}")
    if y.dtype != c.dtype:
        problems.append(f"y has dtype {y.dtype}, expected {c.dtype}")
    x = leaves[0]
    # the layout contract (bsconv_fused._shapes.empty_output): channels_last in, channels_last out, unless x is
    # also plain-contiguous (C_in = 1 or a 1x1 image), where both layouts describe the same strides
    cl_in = c.layout == "channels_last" and not x.is_contiguous()
    if cl_in and not y.is_contiguous(memory_format=torch.channels_last):
        problems.append("y lost channels_last")
    tf32 = tf32_in_force(c.dtype, device)
    errs = {"y": rel_err(y, ref) if not problems else float("inf")}
    tols = {"y": tolerance(c.dtype, tf32, rel_err(y2, ref))}
    if set(grads) != set(rgrads):
        problems.append(f"gradients {sorted(grads)}, expected {sorted(rgrads)}")
    for name, g in grads.items():
        t = leaves[GRAD_NAMES.index(name)]
        if g is None or g.shape != t.shape or g.dtype != t.dtype:
            problems.append(f"grad {name}: shape/dtype differs from its input")
            continue
        if name == "x" and cl_in and not g.is_contiguous(memory_format=torch.channels_last):
            problems.append("dx lost channels_last")
        if name in rgrads:
            errs[name] = rel_err(g, rgrads[name])
            tols[name] = tolerance(c.dtype, tf32, rel_err(grads2[name], rgrads[name]))
    return Measurement(errs, tols, problems, rec)


def check(c: Case, fn: Callable, device, *, backend: Optional[str] = None) -> Dict[str, float]:
    """Run fn(x, pw, dw, bias, stride, padding, dilation, mid_bias=...[, activation=...]) on case c and hold it
    against float64.

    backend: the fused backend fn is expected to run ("triton", "cpu", "cuda"); asserted through OpRecorder, so a
    call that quietly takes the two-layer path fails. None only for the two-layer path itself.
    Asserts y's shape, dtype and memory format, that exactly the requested gradients exist with the right
    shape/dtype/layout, and every error within :func:`tolerance`. Returns the errors by name."""
    m = measure(c, fn, device)
    if backend is not None:
        m.rec.assert_ran(backend, backward=len(m.errs) > 1)
    assert not m.problems, f"{c}: {m.problems}"
    bad = m.over()
    assert not bad, f"{c}: errors above tolerance (err, tol): {bad} (all errors: {m.errs})"
    return m.errs
