"""When the extension's CPU kernels are expected to lose to the two-layer PyTorch path, and why.

``auto`` on CPU tensors should run the fused kernels for a layer only where they were measured at >= 0.95x of the
best two-layer path (NCHW or channels_last, whichever is faster) in the forward *and* in forward+backward, and the
two-layer path everywhere else. The rule below is read off the interleaved measurements in
benchmarks/results/cpu-epyc-2core-2026-12-02/summary.md (AMD EPYC Zen 4 VM, one thread, thread CPU time, the layer
table (bench.suites.TABLE_LAYERS) with maps capped at 56x56, K=3, stride 1; docs/cpu-kernels.md explains the
kernels):

- float32 (two-layer time / fused time, forward and forward+backward):
  64->128@56: 1.38, 1.42 (N=1), 1.79, 1.27 (N=8); 128->128@56: 1.34, 1.28 (N=1), 1.64, 1.01 (N=8): fused. The
  two-layer path's intermediate (1.6 MB per image) leaves L2; the fused kernels keep it in cache.
  32->64@56: 0.84, 1.28 (N=1), 1.20, 1.90 (N=8): fused from N=2 on; a single image's thin GEMMs (K=32) lose the
  forward to oneDNN's 1x1 convolution.
  C_in >= 128 on maps of 28x28 and below: 0.83-0.97, 0.56-0.92 (N=1), 0.97-1.15, 0.70-0.90 (N=8): two-layer. The
  intermediate stays in cache anyway, and the fused backward runs one more pointwise GEMM (t is recomputed).
- float64: 1.18-3.42x in every direction at every layer (N=1): fused (the two-layer path has no oneDNN kernels).
- bfloat16: forward 0.38-0.40x at the 56x56 layers: two-layer (the kernels convert every operand to float32,
  oneDNN has native bfloat16 kernels); float16 likewise, unmeasured.
- Kernels other than 3x3, stride 1, dilation 1, and float32 with C_in > 128 on large maps: not measured, two-layer.

Only one thread was measurable on the shared machine (two-thread wall times were dominated by other jobs, load
average above 200); the same rule at other thread counts is a prediction: each thread runs the one-thread kernel on
its share of images, channel blocks or strips.
"""
from __future__ import annotations

from typing import Optional

import torch

from ._shapes import Geometry

# The measured family: what the rule is read off. Outside it the kernels are not known to win.
MEASURED_DTYPES = (torch.float32, torch.float64)
# float32 thresholds (float64 wins everywhere measured):
MIN_PIXELS = 56 * 56   # per-image input map from which the kernels win (measured: 56x56 wins, 28x28 loses)
MAX_C_IN = 128         # widest pointwise input measured to win (128->128@56); the extra backward GEMM grows with it
MIN_C_IN_SINGLE_IMAGE = 64  # a single image's forward at C_in=32 measured 0.84x


def cpu_kernels_lose(g: Geometry, dtype: torch.dtype, threads: int) -> Optional[str]:
    """Why the two-layer path is expected to be faster than the CPU kernels for this layer, or None when the kernels
    were measured at >= 0.95x of it (forward and forward+backward). Pure: depends on its arguments only."""
    if not isinstance(threads, int) or isinstance(threads, bool) or threads < 1:
        raise ValueError(f"threads must be an int >= 1 (torch.get_num_threads()), got {threads!r}")
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating torch.dtype, got {dtype!r}")
    if dtype not in MEASURED_DTYPES:
        return (f"{dtype} on the CPU: the fused kernels convert every operand to float32 while the two-layer path "
                f"runs oneDNN's native {dtype} kernels")
    if (g.kh, g.kw) != (3, 3) or tuple(g.stride) != (1, 1) or tuple(g.dilation) != (1, 1):
        return (f"kernel {g.kh}x{g.kw}, stride {tuple(g.stride)}, dilation {tuple(g.dilation)}: the CPU kernels "
                f"were measured against the two-layer path for 3x3, stride 1, dilation 1 only")
    if dtype == torch.float64:
        return None  # measured 1.18-3.42x at every layer of the table
    if g.H * g.W < MIN_PIXELS:
        return (f"a {g.H}x{g.W} map (< {MIN_PIXELS} pixels): the two-layer path's intermediate stays in cache, and "
                f"the fused backward's extra pointwise GEMM (t is recomputed) costs more than the traffic it saves "
                f"(measured 0.56-0.92x forward+backward at 28x28 and below, float32)")
    if g.C_in > MAX_C_IN:
        return (f"C_in={g.C_in} > {MAX_C_IN}: the fused backward's extra pointwise GEMM grows with C_in; the kernels "
                f"were measured to win up to C_in={MAX_C_IN} only (float32)")
    if g.N == 1 and g.C_in < MIN_C_IN_SINGLE_IMAGE:
        return (f"a single image with C_in={g.C_in} < {MIN_C_IN_SINGLE_IMAGE}: the forward's thin pointwise GEMMs "
                f"lose to oneDNN's 1x1 convolution (measured 0.84x at 32->64@56, float32)")
    return None
