"""Analytic byte and FLOP counts of a BSConvU layer and the roofline lower bounds built from them.

The byte model is the one of docs/performance.md, extended to strides (y has N*Ho*Wo*C_out elements, the
intermediate t has N*H*W*C_out because the pointwise conv runs at input resolution) and to the weights:

- unfused forward (two kernels): PW reads x, writes t; DW reads t, writes y        -> b*(N_x + 2*N_t + N_y)
- fused forward (one kernel):    reads x, writes y                                 -> b*(N_x + N_y)
- unfused backward (autograd over two convs): DW backward reads dy twice (input and weight gradient), t once,
  writes dt; PW backward reads dt twice and x once, writes dx                       -> b*(2*N_x + 4*N_t + 2*N_y)
- fused backward (two kernels): one reads dy, writes dx; one reads x and dy and reduces the weight gradients
                                                                                     -> b*(2*N_x + 2*N_y)
plus the weights (read once per kernel that needs them; gradients written once). At stride 1 (N_y = N_t) these
are exactly performance.md's b*(N_x + 3 N_t), b*(N_x + N_t), b*(2 N_x + 6 N_t) and b*(2 N_x + 2 N_t).

Pointwise GEMM FLOPs G = 2*N*H*W*C_in*C_out: forward 1 G; the fused backward 3 G (dx = W^T dt, dW = dt x^T, and
recomputing t for the depthwise weight gradient), the unfused backward 2 G. The depthwise stencil is left out: it
runs on FMA pipes far below the memory time for every layer of the suite.

A bound is a sum over the kernels of a path of max(bytes / bandwidth, GEMM FLOPs / GEMM throughput): kernels of a
path run one after the other, and each is limited by memory or by tensor work. Bandwidth and throughput are
measured on the card in the same run (a device-to-device copy, a large matmul); with no throughput given, the
bound is memory-only. Fused bounds assume no halo recomputation, so they are strict lower bounds (performance.md's
table charges deep layers a tile-dependent halo factor of 1.13-1.27 on the tensor work, hence its 8.4 and 7.5 us).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Tuple

from .suites import DTYPES, LayerCase


@dataclass(frozen=True)
class Kernel:
    """One kernel of a path: what it moves and what tensor work it does."""

    bytes: int
    flops: int


def _sizes(c: LayerCase) -> Tuple[int, int, int, int, int]:
    b = DTYPES[c.dtype].itemsize
    n_x = c.N * c.H * c.W * c.C_in
    n_t = c.N * c.H * c.W * c.C_out
    n_y = c.N * c.Ho * c.Wo * c.C_out
    return b, n_x, n_t, n_y, c.C_out * c.C_in


def gemm_flops(c: LayerCase) -> int:
    """FLOPs of the pointwise conv as a GEMM: 2*N*H*W*C_in*C_out."""
    return 2 * c.N * c.H * c.W * c.C_in * c.C_out


def kernels(c: LayerCase, direction: str, fused: bool) -> List[Kernel]:
    """The kernels of the fused or unfused path in one direction ("forward", "backward", "forward+backward")."""
    if direction == "forward+backward":
        return kernels(c, "forward", fused) + kernels(c, "backward", fused)
    b, n_x, n_t, n_y, n_pw = _sizes(c)
    n_dw = c.C_out * c.K * c.K + c.C_out  # depthwise weight and bias
    G = gemm_flops(c)
    if direction == "forward":
        if fused:
            return [Kernel(b * (n_x + n_y + n_pw + n_dw), G)]
        return [Kernel(b * (n_x + n_t + n_pw), G), Kernel(b * (n_t + n_y + n_dw), 0)]
    if direction == "backward":
        if fused:
            # dx kernel: dy in, dx out, weights in (dx = W^T dt). Weight kernel: x and dy in, gradients out.
            return [Kernel(b * (n_y + n_x + n_pw + n_dw), G),
                    Kernel(b * (n_x + n_y + 2 * (n_pw + n_dw)), 2 * G)]
        return [Kernel(b * (2 * n_y + 2 * n_t + 2 * n_dw), 0),           # DW backward: dt and its weight gradient
                Kernel(b * (2 * n_t + 2 * n_x + 2 * n_pw), 2 * G)]       # PW backward: dx and its weight gradient
    raise ValueError(f"direction must be one of 'forward', 'backward', 'forward+backward', got {direction!r}")


def model_bytes(c: LayerCase, direction: str, fused: bool) -> int:
    return sum(k.bytes for k in kernels(c, direction, fused))


def model_flops(c: LayerCase, direction: str, fused: bool) -> int:
    return sum(k.flops for k in kernels(c, direction, fused))


def bound_seconds(c: LayerCase, direction: str, fused: bool, bandwidth: float,
                  flops_per_s: Optional[float] = None) -> float:
    """Roofline lower bound in seconds; ``bandwidth`` in bytes/s, ``flops_per_s`` the GEMM throughput or None."""
    if bandwidth <= 0:
        raise ValueError(f"bandwidth must be > 0 bytes/s, got {bandwidth}")
    if flops_per_s is not None and flops_per_s <= 0:
        raise ValueError(f"flops_per_s must be > 0 or None, got {flops_per_s}")
    total = 0.0
    for k in kernels(c, direction, fused):
        t = k.bytes / bandwidth
        if flops_per_s:
            t = max(t, k.flops / flops_per_s)
        total += t
    return total


def fusion_ceiling(C_in: int, C_out: int) -> float:
    """Forward speedup ceiling of fusion for a memory-bound stride-1 layer: (1 + 3r) / (1 + r), r = C_out/C_in."""
    r = C_out / C_in
    return (1 + 3 * r) / (1 + r)
