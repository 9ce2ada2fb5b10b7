"""The layer benchmark: for each case, check every contender against float64, time the ones that are right in each
direction, and add the analytic bounds and the derived columns (speedup, bandwidth and bound fractions)."""
from __future__ import annotations

import gc
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

from . import bounds
from .checks import describe, is_wrong, max_rel_error
from .contenders import Contender
from .results import BOUND, ERROR, NOISY_SPREAD, OK, UNAVAILABLE, WRONG, Row, RunInfo, row_spread
from .suites import DIRECTIONS, LayerCase
from .timing import Timing, peak_memory, time_fn, time_interleaved

Tensors = Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def make_inputs(case: LayerCase, device: torch.device, seed: int = 0) -> Tuple[Tensors, torch.Tensor]:
    """Random inputs (never zeros) scaled so activations stay of order one in fp16: x, pw, dw, bias and dy."""
    g = torch.Generator(device=device).manual_seed(seed)
    dt = case.torch_dtype

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, device=device) * scale).to(dt)

    x = rnd(case.N, case.C_in, case.H, case.W)
    pw = rnd(case.C_out, case.C_in, 1, 1, scale=case.C_in ** -0.5)
    dw = rnd(case.C_out, 1, case.K, case.K, scale=1.0 / case.K)
    bias = rnd(case.C_out, scale=0.1)
    dy = rnd(case.N, case.C_out, case.Ho, case.Wo)
    return (x, pw, dw, bias), dy


def reference64(case: LayerCase, inputs: Tensors, dy: torch.Tensor) -> Tuple[torch.Tensor, List[torch.Tensor]]:
    """y and the gradients of x, pw, dw, bias in float64 via the two-layer path (bsconv_fused.reference)."""
    from ..reference import bsconv_u_reference

    leaves = [t.detach().to(torch.float64).requires_grad_(True) for t in inputs]
    y = bsconv_u_reference(*leaves, stride=case.stride, padding=case.padding)
    grads = torch.autograd.grad(y, leaves, dy.to(torch.float64))
    return y.detach(), [gr.detach() for gr in grads]


def _layout(t: torch.Tensor, channels_last: bool) -> torch.Tensor:
    if channels_last and t.dim() == 4:
        return t.contiguous(memory_format=torch.channels_last)
    return t.contiguous()


def _leaves(inputs: Tensors, channels_last: bool, grad: bool) -> List[torch.Tensor]:
    return [_layout(t.detach(), channels_last).requires_grad_(grad) for t in inputs]


class _Prepared:
    """A contender ready to time: its functions and check results per direction."""

    def __init__(self):
        self.status: Dict[str, str] = {}
        self.err: Dict[str, Optional[float]] = {}
        self.note: Dict[str, str] = {}
        self.runs: Dict[str, Callable[[], object]] = {}
        self.train_call: Optional[Callable[[], object]] = None


def _replayable_backward(c: Contender, case: LayerCase, fn, xs, g) -> Callable[[], object]:
    """A function that replays the backward of one forward, for timing the backward alone."""
    y = fn(*xs)
    try:
        torch.autograd.grad(y, xs, g, retain_graph=True)
    except RuntimeError as e:
        if "donated buffers" not in str(e) or c.build_replay is None:
            raise
        # AOTAutograd lets a compiled backward free ("donate") saved buffers, which forbids replaying it. That only
        # saves memory, so the backward alone is timed on a second compilation without it; the forward+backward
        # row keeps the default compilation (and its memory).
        with torch._functorch.config.patch(donated_buffer=False):
            replay = c.build_replay(case)
            y = replay(*xs)
            torch.autograd.grad(y, xs, g, retain_graph=True)
    return lambda: torch.autograd.grad(y, xs, g, retain_graph=True)


def _prepare(c: Contender, case: LayerCase, inputs: Tensors, dy: torch.Tensor, ref_y, ref_grads,
             directions: Sequence[str]) -> _Prepared:
    p = _Prepared()
    # Inference: forward under no_grad.
    if "forward" in directions:
        try:
            fn = c.build(case, False)
            xs = _leaves(inputs, c.channels_last, False)
            with torch.no_grad():
                y = fn(*xs)
            err = max_rel_error([y], [ref_y])
            p.err["forward"] = err
            if is_wrong(err, case.dtype):
                p.status["forward"] = WRONG
            else:
                p.status["forward"] = OK

                def run_fwd(fn=fn, xs=xs):
                    with torch.no_grad():
                        return fn(*xs)

                p.runs["forward"] = run_fwd
        except Exception as e:  # a contender that cannot run this case is reported, not fatal
            p.status["forward"], p.note["forward"] = ERROR, describe(e)
    train_dirs = [d for d in directions if d != "forward"]
    if train_dirs:
        try:
            fn = c.build(case, True)
            xs = _leaves(inputs, c.channels_last, True)
            g = _layout(dy, c.channels_last)
            y = fn(*xs)
            grads = torch.autograd.grad(y, xs, g)
            err = max_rel_error([y, *grads], [ref_y, *ref_grads])
            del y, grads
            wrong = is_wrong(err, case.dtype)
            for d in train_dirs:
                p.err[d] = err
                p.status[d] = WRONG if wrong else OK
            if not wrong:
                p.runs["forward+backward"] = lambda fn=fn, xs=xs, g=g: torch.autograd.grad(fn(*xs), xs, g)
                p.train_call = p.runs["forward+backward"]
        except Exception as e:
            for d in train_dirs:
                p.status[d], p.note[d] = ERROR, describe(e)
        if p.status.get("backward") == OK:
            # Backward alone replays one graph (retain_graph=True).
            try:
                p.runs["backward"] = _replayable_backward(c, case, fn, xs, g)
            except Exception as e:
                p.status["backward"], p.note["backward"] = ERROR, "backward alone: " + describe(e)
    return p


def _case_fields(case: LayerCase) -> dict:
    return dict(dtype=case.dtype, layer=case.layer, N=case.N, C_in=case.C_in, C_out=case.C_out, H=case.H,
                W=case.W, K=case.K, stride=case.stride)


def run_case(case: LayerCase, suite: str, device: torch.device, contenders: Sequence[Contender],
             directions: Sequence[str], info: RunInfo, *, quick: bool, seed: int = 0) -> List[Row]:
    for d in directions:
        if d not in DIRECTIONS:
            raise ValueError(f"directions must be among {DIRECTIONS}, got {d!r}")
    inputs, dy = make_inputs(case, device, seed)
    ref_y, ref_grads = reference64(case, inputs, dy)
    rows: List[Row] = []
    base = _case_fields(case)
    runs: Dict[Tuple[str, str], Callable[[], object]] = {}  # (contender, direction) -> timed function
    for c in contenders:
        if c.unavailable:
            rows += [Row(suite, case.name, d, c.name, c.kind, UNAVAILABLE, note=c.unavailable, **base)
                     for d in directions]
            continue
        p = _prepare(c, case, inputs, dy, ref_y, ref_grads, directions)
        runs.update({(c.name, d): fn for d, fn in p.runs.items()})
        for d in directions:
            row = Row(suite, case.name, d, c.name, c.kind, p.status.get(d, ERROR), max_err=p.err.get(d),
                      note=p.note.get(d, ""), model_bytes=bounds.model_bytes(case, d, c.fused_bytes), **base)
            if row.status == OK:
                try:
                    t: Timing = time_fn(p.runs[d], device, quick=quick)
                    row.median_us, row.p20_us, row.p80_us = t.median * 1e6, t.p20 * 1e6, t.p80 * 1e6
                    if d == "forward+backward" and p.train_call is not None:
                        mem = peak_memory(p.train_call, device)
                        row.peak_mem_mb = None if mem is None else mem / 2 ** 20
                except Exception as e:
                    row.status, row.note = ERROR, describe(e)
            rows.append(row)
        del p
    for d in directions:
        remeasure_noisy([r for r in rows if r.direction == d], runs, device, quick=quick)
    runs.clear()
    flops = info.gemm_flops.get(case.dtype)
    for d in directions:
        for fused in (True, False):
            t = bounds.bound_seconds(case, d, fused, info.copy_bandwidth, flops)
            rows.append(Row(suite, case.name, d, "bound-fused" if fused else "bound-unfused", "bound", BOUND,
                            median_us=t * 1e6, model_bytes=bounds.model_bytes(case, d, fused),
                            note="memory" + (" + GEMM" if flops else "") + " roofline", **base))
    derive(rows, info)
    del inputs, dy, ref_y, ref_grads
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return rows


def remeasure_noisy(rows: List[Row], runs: Dict[Tuple[str, str], Callable[[], object]], device: torch.device, *,
                    quick: bool) -> None:
    """Rows of one case and direction whose p80/p20 spread exceeds NOISY_SPREAD are timed once more, interleaved
    with the fastest fused contender and the fastest baseline (the pair the speedup compares), so a slow phase of
    the machine hits both sides of the ratio alike. The new timings replace the old ones for every row re-timed;
    a row still above the threshold is flagged ``noisy``."""
    timed = [r for r in rows if r.status == OK and r.median_us and (r.contender, r.direction) in runs]
    noisy = [r for r in timed if (row_spread(r) or 1.0) > NOISY_SPREAD]
    if not noisy:
        return
    members = list(noisy)
    for kind in ("fused", "baseline"):
        cands = [r for r in timed if r.kind == kind]
        if cands:
            best = min(cands, key=lambda r: r.median_us)
            if all(best is not m for m in members):
                members.append(best)
    was = {id(r): row_spread(r) for r in members}
    try:
        ts = time_interleaved([runs[(r.contender, r.direction)] for r in members], device, quick=quick)
    except Exception as e:  # keep the first timings, flagged
        for r in noisy:
            r.noisy = True
            r.note = (r.note + "; " if r.note else "") + "noisy; re-measurement failed: " + describe(e)
        return
    partners = ", ".join(r.contender for r in members)
    noisy_ids = {id(r) for r in noisy}
    for r, t in zip(members, ts):
        r.median_us, r.p20_us, r.p80_us = t.median * 1e6, t.p20 * 1e6, t.p80 * 1e6
        now = row_spread(r) or 1.0
        r.noisy = now > NOISY_SPREAD
        if id(r) in noisy_ids or r.noisy:
            r.note = (r.note + "; " if r.note else "") + (
                f"{'noisy' if r.noisy else 'was noisy'}: p80/p20 {was[id(r)]:.2f}x, re-measured interleaved with "
                f"{partners}: {now:.2f}x")


def derive(rows: List[Row], info: RunInfo) -> None:
    """Fill speedup (vs the fastest correct baseline), bandwidth fraction and bound fraction, per case+direction."""
    groups: Dict[Tuple[str, str, str], List[Row]] = {}
    for r in rows:
        groups.setdefault((r.suite, r.case, r.direction), []).append(r)
    for grp in groups.values():
        base = [r.median_us for r in grp if r.kind == "baseline" and r.status == OK and r.median_us]
        best = min(base) if base else None
        fused_bound = next((r.median_us for r in grp if r.contender == "bound-fused"), None)
        for r in grp:
            if r.median_us is None or r.median_us <= 0:
                continue
            if best is not None and r.kind != "bound":
                r.speedup = best / r.median_us
            if r.model_bytes is not None and info.copy_bandwidth > 0:
                r.bw_frac = r.model_bytes / (r.median_us * 1e-6) / info.copy_bandwidth
            if fused_bound is not None:
                r.bound_frac = fused_bound / r.median_us


def run_suite(cases: Sequence[LayerCase], suite: str, device: torch.device, contenders: Sequence[Contender],
              directions: Sequence[str], info: RunInfo, *, quick: bool,
              log: Callable[[str], None] = print, on_case: Optional[Callable[[List[Row]], None]] = None) -> List[Row]:
    rows: List[Row] = []
    for i, case in enumerate(cases, 1):
        t0 = time.perf_counter()
        log(f"[{suite} {i}/{len(cases)}] {case.name} ...")
        case_rows = run_case(case, suite, device, contenders, directions, info, quick=quick)
        rows += case_rows
        if on_case is not None:
            on_case(case_rows)
        log(f"[{suite} {i}/{len(cases)}] {case.name} done in {time.perf_counter() - t0:.1f} s")
    return rows
