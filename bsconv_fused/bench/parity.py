"""Parity check of every backend on a small layer suite: output and all five gradients against a float64 reference
of the same inputs, on every device present. The first thing the main job does, before any timing."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence

import torch

from ..backends import BACKENDS, TABLE, BackendUnavailableError, available_backends
from ..functional import bsconv_u
from ..reference import bsconv_u_reference
from ..testing import OpRecorder, rel_err, tf32_in_force, tolerance
from .checks import describe
from .suites import DTYPES, PARITY_CASES, ParityCase

DEVICE_DTYPES = {"cpu": ("fp32", "bf16", "fp64"), "cuda": ("fp16", "bf16", "fp32")}


@dataclass
class ParityResult:
    backend: str
    device: str
    dtype: str
    case: str
    status: str          # pass / FAIL / n/a / error
    max_err: Optional[float] = None
    note: str = ""


def _inputs(c: ParityCase, device: torch.device, dtype: torch.dtype, seed: int):
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).to(device=device, dtype=dtype)

    kh, kw = c.kernel
    x = rnd(c.N, c.C_in, c.H, c.W)
    if c.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    pw = rnd(c.C_out, c.C_in, 1, 1, scale=c.C_in ** -0.5)
    dw = rnd(c.C_out, 1, kh, kw, scale=(kh * kw) ** -0.5)
    bias = rnd(c.C_out, scale=0.1) if c.bias else None
    mid = rnd(c.C_out, scale=0.1) if c.mid_bias else None
    return x, pw, dw, bias, mid


def check_case(backend: str, c: ParityCase, device: torch.device, dtype: str, seed: int = 0) -> ParityResult:
    dt = DTYPES[dtype]
    x, pw, dw, bias, mid = _inputs(c, device, dt, seed)
    leaves = [t for t in (x, pw, dw, bias, mid) if t is not None]
    ours = [t.detach().clone().requires_grad_(True) for t in leaves]
    ref = [t.detach().to(torch.float64).requires_grad_(True) for t in leaves]

    def unpack(ts):
        it = iter(ts)
        return next(it), next(it), next(it), (next(it) if c.bias else None), (next(it) if c.mid_bias else None)

    args = dict(stride=c.stride, padding=c.padding, dilation=c.dilation)
    base = dict(backend=backend, device=str(device), dtype=dtype, case=c.label)
    rec = OpRecorder()
    try:
        xo, pwo, dwo, bo, mo = unpack(ours)
        with rec:
            y = bsconv_u(xo, pwo, dwo, bo, mid_bias=mo, backend=backend, **args)
    except BackendUnavailableError as e:
        return ParityResult(status="n/a", note=str(e).split(". To fall back")[0][:160], **base)
    except Exception as e:
        return ParityResult(status="error", note=describe(e), **base)
    xr, pwr, dwr, br, mr = unpack(ref)
    y_ref = bsconv_u_reference(xr, pwr, dwr, br, mid_bias=mr, **args)
    dy = torch.randn(y_ref.shape, generator=torch.Generator().manual_seed(seed + 1)).to(device=device, dtype=dt)
    try:
        with rec:
            grads = torch.autograd.grad(y, ours, dy)
    except Exception as e:
        return ParityResult(status="error", note="backward: " + describe(e), **base)
    grads_ref = torch.autograd.grad(y_ref, ref, dy.to(torch.float64))
    # the tolerance rule of bsconv_fused.testing: within twice the two-layer path's own error in this dtype
    same = [t.detach().clone().requires_grad_(True) for t in leaves]
    xs, pws, dws, bs, ms = unpack(same)
    y_same = bsconv_u_reference(xs, pws, dws, bs, mid_bias=ms, **args)
    grads_same = torch.autograd.grad(y_same, same, dy)
    tf32 = tf32_in_force(dt, device)
    errs = [rel_err(a, r) for a, r in zip([y, *grads], [y_ref.detach(), *grads_ref])]
    tols = [tolerance(dt, tf32, rel_err(a, r)) for a, r in zip([y_same, *grads_same], [y_ref.detach(), *grads_ref])]
    err = max(errs)
    notes = []
    if c.channels_last and not y.is_contiguous(memory_format=torch.channels_last):
        notes.append("output is not channels_last")
    if backend != "torch":
        try:
            rec.assert_ran(backend)
        except AssertionError as e:
            notes.append(str(e))
    over = [f"{e:.1e} > {t:.1e}" for e, t in zip(errs, tols) if not e <= t]
    notes += over[:1]
    return ParityResult(status="pass" if not notes else "FAIL", max_err=err, note="; ".join(notes), **base)


def devices() -> List[torch.device]:
    out = [torch.device("cpu")]
    if torch.cuda.is_available():
        out.append(torch.device("cuda"))
    return out


def run(backends: Optional[Sequence[str]] = None, cases: Sequence[ParityCase] = PARITY_CASES,
        log: Callable[[str], None] = print) -> List[ParityResult]:
    """Every available backend x device x dtype x case. Backends reported unavailable are listed once as n/a."""
    status = available_backends()
    results: List[ParityResult] = []
    for b in backends or BACKENDS:
        if not status[b].available:
            results.append(ParityResult(b, "-", "-", "-", "n/a", note=status[b].reason))
            if log:
                log(f"  {b:<7}n/a: {status[b].reason}")
            continue
        for dev in devices():
            if b in TABLE and TABLE[b].device != dev.type and not (b == "triton" and dev.type == "cpu"):
                continue
            for dtype in DEVICE_DTYPES[dev.type]:
                rs = [check_case(b, c, dev, dtype) for c in cases]
                results += rs
                if log:
                    log(format_line(b, dev.type, dtype, rs))
    return results


def format_line(backend: str, device: str, dtype: str, rs: Sequence[ParityResult]) -> str:
    counts = {s: sum(r.status == s for r in rs) for s in ("pass", "FAIL", "error", "n/a")}
    errs = [r.max_err for r in rs if r.max_err is not None]
    worst = f"max err {max(errs):.1e}" if errs else ""
    bad = [f"{r.case}: {r.status} {r.note}".strip() for r in rs if r.status in ("FAIL", "error")]
    na = next((r.note for r in rs if r.status == "n/a"), "")
    summary = ", ".join(f"{v} {k}" for k, v in counts.items() if v)
    line = f"  {backend:<7}{device:<5}{dtype:<5} {summary:<22} {worst}"
    if na and not counts["pass"]:
        line += f"  ({na})"
    return line + "".join(f"\n      {b}" for b in bad)


def passed(results: Sequence[ParityResult]) -> bool:
    return not any(r.status in ("FAIL", "error") for r in results)


def write_json(path, machine: dict, results: Sequence[ParityResult]) -> None:
    """The parity results beside the benchmark's (results.json), with the machine they ran on and the tolerances."""
    import json
    from dataclasses import asdict
    from pathlib import Path

    from .. import testing

    tolerance = {
        "rule": "err(fused) <= min(2 * err(two-layer path, same dtype) + floor, cap), errors against float64 "
                "(bsconv_fused/testing.py)",
        "floor_cap": {str(dt).replace("torch.", "") + ("-tf32" if tf32 else ""): list(v)
                      for (dt, tf32), v in testing.TOLERANCE.items()},
    }
    doc = {"machine": machine, "passed": passed(results), "tolerance": tolerance,
           "cases": [c.label for c in PARITY_CASES], "results": [asdict(r) for r in results]}
    Path(path).write_text(json.dumps(doc, indent=1, default=str))
