"""Shared parity machinery: build a BSConvU case, run a backend, compare outputs and every gradient with a float64
reference of the same (already rounded) inputs.

Tolerance: max|fast - ref| <= tol[dtype] * max(1, max|ref|), per tensor. Why these values:
- float32: the interpreter and CPU kernels compute in fp32 with fp32 accumulation over at most a few hundred terms
  (~1e-6 relative); 1e-4 leaves room for TF32 on GPUs (10-bit mantissa, 2^-11 relative per product, errors
  partly cancel over the reduction), which cuDNN uses by default too.
- float16: inputs are exact in the reference, the output is rounded once to fp16 (2^-11 = 4.9e-4 relative) and the
  backward GEMMs round dt to fp16 as the unfused path stores it: 4e-3.
- bfloat16: 8-bit mantissa, one rounding of the output (2^-8 = 3.9e-3), plus dt rounded before the GEMMs, and the
  Triton interpreter truncates instead of rounding on fp32->bf16 (2^-7): 3e-2.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Tuple

import torch

from bsconv_fused.reference import bsconv_u_reference

TOL = {torch.float32: 1e-4, torch.float16: 4e-3, torch.bfloat16: 3e-2, torch.float64: 1e-10}
GRAD_NAMES = ("x", "pw_weight", "dw_weight", "bias", "mid_bias")

# The coverage every backend's parity tests walk (issue 2, item 1)
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

    def __str__(self):
        return (f"N{self.N} {self.C_in}->{self.C_out} {self.H}x{self.W} k{self.k} s{self.stride} p{self.padding} "
                f"d{self.dilation} b{int(self.bias)}m{int(self.mid)} {self.layout} {self.grad_layout} "
                f"{str(self.dtype)[6:]}")


def make_inputs(c: Case, device):
    """Inputs of case c on device: x in the requested layout, leaves with requires_grad as asked."""
    dt = c.dtype
    if c.layout == "sliced":
        # a channel slice of a wider tensor and a spatial step: strides no kernel may assume away
        wide = torch.randn(c.N, c.C_in + 3, c.H + 1, 2 * c.W, dtype=dt, device=device)
        x = wide[:, 2:2 + c.C_in, 1:, ::2]
    else:
        x = torch.randn(c.N, c.C_in, c.H, c.W, dtype=dt, device=device)
        if c.layout == "channels_last":
            x = x.contiguous(memory_format=torch.channels_last)
    pw = (torch.randn(c.C_out, c.C_in, 1, 1, dtype=dt, device=device) / c.C_in ** 0.5)
    dw = torch.randn(c.C_out, 1, *c.k, dtype=dt, device=device) / (c.k[0] * c.k[1]) ** 0.5
    bias = torch.randn(c.C_out, dtype=dt, device=device) if c.bias else None
    mid = torch.randn(c.C_out, dtype=dt, device=device) if c.mid else None
    leaves = [x, pw, dw, bias, mid]
    for t, r in zip(leaves, c.requires):
        if t is not None and r:
            t.requires_grad_(True)
    return leaves


def make_grad(c: Case, y: torch.Tensor) -> torch.Tensor:
    if c.grad_layout == "expanded":  # what y.sum().backward() produces: stride 0 everywhere
        return torch.randn((), dtype=y.dtype, device=y.device).expand_as(y)
    if c.grad_layout == "transposed":
        return torch.randn(y.shape[0], y.shape[1], y.shape[3], y.shape[2], dtype=y.dtype,
                           device=y.device).transpose(2, 3)
    return torch.randn_like(y, memory_format=torch.contiguous_format)


def _rel_err(a: torch.Tensor, ref: torch.Tensor) -> float:
    return (a.double() - ref).abs().max().item() / max(1.0, ref.abs().max().item())


def check(c: Case, fn, device) -> dict:
    """Run fn(x, pw, dw, bias, stride, padding, dilation, mid_bias=...) on case c and compare with float64.

    Returns the relative errors by name; asserts they are within TOL[dtype], that y keeps x's memory format,
    and that exactly the requested gradients exist."""
    x, pw, dw, bias, mid = make_inputs(c, device)
    y = fn(x, pw, dw, bias, c.stride, c.padding, c.dilation, mid_bias=mid)
    d = lambda t: None if t is None else t.detach().double().requires_grad_(t.requires_grad)  # noqa: E731
    rx, rpw, rdw, rb, rm = (d(t) for t in (x, pw, dw, bias, mid))
    ref = bsconv_u_reference(rx, rpw, rdw, rb, c.stride, c.padding, c.dilation, mid_bias=rm)
    tol = TOL[c.dtype]
    assert y.shape == ref.shape, (str(c), y.shape, ref.shape)
    assert y.dtype == c.dtype
    if c.layout == "channels_last":
        assert y.is_contiguous(memory_format=torch.channels_last), f"{c}: y lost channels_last"
    errs = {"y": _rel_err(y, ref)}
    leaves = [(n, t, r) for n, t, r in zip(GRAD_NAMES, (x, pw, dw, bias, mid), (rx, rpw, rdw, rb, rm))
              if t is not None and t.requires_grad]
    if leaves:
        gy = make_grad(c, y)
        grads = torch.autograd.grad(y, [t for _, t, _ in leaves], gy)
        rgrads = torch.autograd.grad(ref, [r for _, _, r in leaves], gy.double())
        for (name, t, _), g, rg in zip(leaves, grads, rgrads):
            assert g is not None and g.shape == t.shape and g.dtype == t.dtype, (str(c), name)
            if name == "x" and c.layout == "channels_last":
                assert g.is_contiguous(memory_format=torch.channels_last), f"{c}: dx lost channels_last"
            errs[name] = _rel_err(g, rg)
    bad = {k: v for k, v in errs.items() if not v <= tol}
    assert not bad, f"{c}: errors above {tol}: {bad} (all: {errs})"
    return errs
