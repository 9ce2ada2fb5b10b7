"""Correctness before timing: every contender's output and gradients against a float64 reference of the same
inputs. A contender that disagrees is reported as wrong and never timed (a fast wrong answer is not a result)."""
from __future__ import annotations

from typing import Dict, Optional, Sequence

import torch

# Allowed max |out - ref64| / max |ref64|, per dtype. Inputs are rounded to the dtype first and the reference sees
# those rounded values, so the error is what the computation adds: output rounding (fp16 2^-11, bf16 2^-8 relative)
# plus rounding of the intermediate on the two-layer path, and TF32 (10-bit mantissa) in fp32 convs and tl.dot,
# which cuDNN and Triton use by default. The bounds sit 10-20x above those, so they flag broken kernels (errors of
# order 1), not precision differences; the measured error is reported either way.
TOLERANCE: Dict[str, float] = {"fp64": 1e-9, "fp32": 1e-2, "fp16": 1e-2, "bf16": 4e-2}

# Whole networks stack 50-110 layers, so errors compound; a network contender is wrong when its error exceeds
# twice the error of the eager two-layer path in the same dtype plus this floor (flash-attention's rule).
NETWORK_FLOOR: Dict[str, float] = {"fp64": 1e-9, "fp32": 1e-3, "fp16": 1e-2, "bf16": 4e-2}


def rel_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """max |out - ref| / max |ref| (ref in float64); inf when shapes differ or out holds NaN/Inf."""
    if tuple(out.shape) != tuple(ref.shape):
        return float("inf")
    o = out.detach().to(torch.float64)
    if not torch.isfinite(o).all():
        return float("inf")
    scale = ref.abs().max().item()
    err = (o - ref).abs().max().item() if ref.numel() else 0.0
    return err / scale if scale > 0 else err


def max_rel_error(outs: Sequence[Optional[torch.Tensor]], refs: Sequence[torch.Tensor]) -> float:
    if len(outs) != len(refs):
        return float("inf")
    errs = [rel_error(o, r) if o is not None else float("inf") for o, r in zip(outs, refs)]
    return max(errs) if errs else 0.0


def is_wrong(err: float, dtype: str) -> bool:
    return not err <= TOLERANCE[dtype]  # NaN counts as wrong


def describe(e: BaseException, limit: int = 240) -> str:
    """A one-line description of an exception for a report cell, without torch.library's location boilerplate."""
    import re

    msg = re.sub(r" \(with implementation in <module [^>]*>\)", "", str(e).strip())
    msg = " ".join(msg.split())
    return f"{type(e).__name__}: {msg}"[:limit]
