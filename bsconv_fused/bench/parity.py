"""Parity check of every backend on a small layer suite: output and all five gradients against a float64 reference
of the same inputs, on every device present. The first thing the main job does, before any timing."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence

import torch

from ..backends import BACKENDS, TABLE, BackendUnavailableError, available_backends
from ..functional import bsconv_u
from ..testing import Case, measure
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


def as_case(c: ParityCase, dtype: torch.dtype) -> Case:
    """The test suite's Case for a parity case: same inputs, oracle and tolerance rule as the tests."""
    return Case(N=c.N, C_in=c.C_in, C_out=c.C_out, H=c.H, W=c.W, k=c.kernel, stride=c.stride, padding=c.padding,
                dilation=c.dilation, bias=c.bias, mid=c.mid_bias,
                layout="channels_last" if c.channels_last else "nchw", dtype=dtype)


def check_case(backend: str, c: ParityCase, device: torch.device, dtype: str, seed: int = 0) -> ParityResult:
    """One parity case through :func:`bsconv_fused.testing.measure`: the output and every gradient against the
    float64 oracle, within the tests' tolerance rule, and the backend's own ops seen running."""
    base = dict(backend=backend, device=str(device), dtype=dtype, case=c.label)

    def fn(x, pw, dw, bias, stride, padding, dilation, mid_bias=None):
        return bsconv_u(x, pw, dw, bias, stride, padding, dilation, mid_bias=mid_bias, backend=backend)

    torch.manual_seed(seed)  # grad_output comes from the global generator
    try:
        m = measure(as_case(c, DTYPES[dtype]), fn, device, generator=torch.Generator().manual_seed(seed))
    except BackendUnavailableError as e:
        return ParityResult(status="n/a", note=str(e).split(". To fall back")[0][:160], **base)
    except Exception as e:
        return ParityResult(status="error", note=describe(e), **base)
    notes = list(m.problems)
    if backend != "torch":
        try:
            m.rec.assert_ran(backend)
        except AssertionError as e:
            notes.append(str(e))
    notes += [f"{k} {e:.1e} > {t:.1e}" for k, (e, t) in list(m.over().items())[:1]]
    err = max(m.errs.values())
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
