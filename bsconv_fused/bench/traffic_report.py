"""GPU-free traffic report: every Triton kernel (forward and backward) run under the interpreter at the suite's
layers scaled down (N=1, maps capped at 28x28 or 16x16 in quick mode, real channel counts), its requested and
unique bytes and tl.dot FLOPs held against the fused bounds of docs/performance.md:

- forward:  unique bytes vs x + weights + y (nothing else needs to reach memory); dot FLOPs vs G = 2*N*H*W*C_in*C_out
  (1.0 = the pointwise conv computed once; the halo recomputation shows as the excess; K*K = once per tap).
- backward: unique bytes vs the two-kernel bound (dy and x read by both kernels, dx written, weights read and their
  gradients written); dot FLOPs vs G (the ideal is 3: dx, d_pw and recomputing t for d_dw). Split-reduction
  partials the kernels write in fp32 show up as unique bytes.
A direction's unique bytes are the sum over its kernels (each kernel's distinct bytes: a perfect cache within a
kernel, none across kernels).

Run ``python -m bsconv_fused.bench.traffic_report [--quick] [--markdown FILE] [--json]``; it re-executes itself
with TRITON_INTERPRET=1 when the variable is not set, because the interpreter must be on before the kernels are
defined. :func:`run` does the same from another process (the CLI's main job).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Dict, List, Optional, Sequence

from . import bounds
from .suites import LayerCase, interpreter_cases

_MARK = "BSCONV_TRAFFIC_JSON:"


def _kernel_name(kernel) -> str:
    fn = getattr(kernel, "fn", kernel)
    return getattr(fn, "__name__", type(kernel).__name__)


def bound_bytes(case: LayerCase, direction: str) -> int:
    """The fused path's bytes at this shape (bsconv_fused.bench.bounds): forward x + weights + y; backward the
    two-kernel bound of performance.md, each kernel reading what it needs once (dy and x twice, dx once, weights
    and their gradients)."""
    return bounds.model_bytes(case, direction, fused=True)


def measure_case(case: LayerCase, directions: Sequence[str] = ("forward", "backward")) -> List[dict]:
    """Run the Triton launches of one case under the counter; one row per kernel and one per direction total.
    Also checks the result against the float64 reference, so a count is never reported for a wrong kernel."""
    import torch

    from ..triton import launch as L
    from .checks import max_rel_error
    from .layers import make_inputs, reference64
    from .traffic import count_traffic

    (x, pw, dw, bias), dy = make_inputs(case, torch.device("cpu"))
    ref_y, ref_grads = reference64(case, (x, pw, dw, bias), dy)
    pw2 = pw.reshape(case.C_out, case.C_in)
    s, p, d = (case.stride,) * 2, (case.padding,) * 2, (1, 1)
    G = 2 * case.N * case.H * case.W * case.C_in * case.C_out
    rows = []
    for direction in directions:
        if direction == "forward":
            y, launches = L.forward_launches(x, pw2, dw, bias, None, s, p, d)
            finish = lambda: [y]  # noqa: E731
            refs = [ref_y]
        elif direction == "backward":
            # bias grad is d(bias) = sum of dy; the backward op computes it from grad_y (mask entry 3)
            launches, fin = L.backward_launches(dy, x, pw2, dw, None, s, p, d, (True, True, True, True, False))
            finish = lambda fin=fin: list(fin()[:4])  # noqa: E731
            refs = list(ref_grads)
        else:
            raise ValueError(f"direction must be 'forward' or 'backward', got {direction!r}")
        bound = bound_bytes(case, direction)
        total: Dict[str, float] = dict(requested=0, unique=0, dot_flops=0, requested_load=0, requested_store=0,
                                       requested_atomic=0)
        t0 = time.perf_counter()
        for i, launch in enumerate(launches):
            with count_traffic() as t:
                launch.run()
            d_ = t.as_dict()
            # a launch's scratch (the staged forward's per-program slots) is L2-resident working memory, not layer
            # traffic: the kernel stores every element of it unmasked, so its distinct bytes are exactly its size
            scratch = sum(b.numel() * b.element_size() for b in getattr(launch, "scratch", ()))
            d_["unique"] -= scratch
            for k in total:
                total[k] += d_[k]
            rows.append(_row(case, direction, f"{_kernel_name(launch.kernel)}#{i}", d_, bound, G,
                             grid=list(launch.grid), scratch_bytes=scratch))
        outs = finish()
        err = max_rel_error([o.reshape(ref.shape) for o, ref in zip(outs, refs)], refs)
        rows.append(_row(case, direction, "total", total, bound, G, seconds=time.perf_counter() - t0, max_err=err))
    return rows


def _row(case: LayerCase, direction: str, kernel: str, d: dict, bound: int, G: int, **extra) -> dict:
    r = dict(layer=case.layer, case=case.name, direction=direction, kernel=kernel, bound_bytes=bound, gemm_flops=G,
             requested=int(d["requested"]), unique=int(d["unique"]), dot_flops=int(d["dot_flops"]),
             requested_x=d["requested"] / bound, unique_x=d["unique"] / bound, dot_x=d["dot_flops"] / G)
    r.update(extra)
    return r


def measure(cases: Sequence[LayerCase], log=None) -> List[dict]:
    rows = []
    for i, c in enumerate(cases, 1):
        t0 = time.perf_counter()
        if log:
            log(f"[traffic {i}/{len(cases)}] {c.name}: counting forward and backward under the interpreter ...")
        rows += measure_case(c)
        if log:
            log(f"[traffic {i}/{len(cases)}] {c.name} counted in {time.perf_counter() - t0:.1f} s")
    return rows


def format_table(rows: Sequence[dict], markdown: bool = True) -> str:
    head = ["layer (N=1)", "direction", "kernel", "grid", "requested / bound", "unique / bound", "dot FLOPs / G",
            "max err"]
    body = []
    for r in rows:
        body.append([r["case"].rsplit(" ", 1)[0].replace(" N1", ""), r["direction"], r["kernel"],
                     "x".join(str(v) for v in r.get("grid", [])) or "-",
                     f"{r['requested_x']:.2f}", f"{r['unique_x']:.2f}", f"{r['dot_x']:.2f}",
                     f"{r['max_err']:.1e}" if r.get("max_err") is not None else ""])
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in body])
    widths = [max(len(x) for x in col) for col in zip(head, *body)]
    fmt = "  ".join("{:<%d}" % w for w in widths)
    return "\n".join([fmt.format(*head)] + [fmt.format(*row) for row in body])


MD_INTRO = """# Triton kernel traffic, counted under the interpreter (no GPU)

Generated by `python -m bsconv_fused.bench.traffic_report --markdown benchmarks/results/traffic.md` (dtype {dtype},
git {commit}).
Each layer of the performance.md table at N=1 with maps capped at 28x28 (plus one 56x56 layer) and its real channel
counts, K=3 and stride 1 unless stated. Multiples of the fused bounds:
- requested / bound: bytes the loads, stores and atomics ask for, over the bytes that must reach memory at least once
  (forward: x + weights + y; backward: the two-kernel bound, see below). DRAM traffic on a GPU lies between
  the unique and the requested bytes, depending on cache hits.
- unique / bound: distinct bytes touched, summed over the kernels of a direction. 1.00 = nothing but the bound
  reaches memory; the backward bound is two kernels each reading x and dy once (performance.md's 2*N_x + 2*N_t),
  and its fp32 split-reduction partials count on top.
- dot FLOPs / G, G = 2*N*H*W*C_in*C_out the pointwise GEMM: 1.00 = computed once; above 1 = halo recomputation (K*K
  would be once per tap). Backward ideal: 3 (dx, d_pw, and t recomputed for d_dw).
The 56x56 and 112x112 maps are capped at 28x28 here, where tiles are smaller relative to their halo, so their
recomputation may read higher than at full size; the 28x28, 14x14 and 7x7 layers keep their real maps. The counts are exact for
these shapes, not extrapolations; the fused kernels' results are checked against float64 in the same run (max err).
"""


def _child(argv: Sequence[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m bsconv_fused.bench.traffic_report",
                                 description="Count Triton kernel traffic under the interpreter.")
    ap.add_argument("--quick", action="store_true", help="two layers only (CI)")
    ap.add_argument("--dtype", default="fp32", choices=("fp32", "fp16"),
                    help="element type (bf16 is unsupported by the interpreter's arithmetic)")
    ap.add_argument("--markdown", metavar="FILE", help="also write the table to FILE as markdown")
    ap.add_argument("--json", action="store_true", help="print the rows as one JSON line (for a parent process)")
    args = ap.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") != "1":
        env = dict(os.environ, TRITON_INTERPRET="1")
        return subprocess.call([sys.executable, "-m", "bsconv_fused.bench.traffic_report", *argv], env=env)
    log = (lambda m: print(m, file=sys.stderr, flush=True)) if args.json else (lambda m: print(m, flush=True))
    rows = measure(interpreter_cases(args.quick, args.dtype), log=log)
    if args.json:
        print(_MARK + json.dumps(rows))
    else:
        print(format_table(rows, markdown=False))
    if args.markdown:
        from .machine import git_commit

        with open(args.markdown, "w") as f:
            f.write(MD_INTRO.format(dtype=args.dtype, commit=git_commit() or "unknown") + "\n")
            f.write(format_table(rows, markdown=True) + "\n")
    return 0


def _child_cmd(quick: bool, dtype: str) -> List[str]:
    return [sys.executable, "-m", "bsconv_fused.bench.traffic_report", "--json", "--dtype", dtype] + (
        ["--quick"] if quick else [])


def run(quick: bool, dtype: str = "fp32", timeout: Optional[float] = None, log=print) -> List[dict]:
    """The report's rows, computed in a child process with TRITON_INTERPRET=1 (this process may have Triton
    kernels defined for the GPU already). The child's progress lines are relayed to ``log`` as they come."""
    import tempfile
    import threading

    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONUNBUFFERED="1")
    cmd = _child_cmd(quick, dtype)
    # stdout (one long JSON line at the end) goes to a file: a pipe left unread while stderr streams could fill up
    # and stall the child.
    with tempfile.TemporaryFile(mode="w+") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.PIPE, text=True, bufsize=1)
        timer = None
        expired = []
        if timeout is not None:
            def kill():
                expired.append(True)
                proc.kill()

            timer = threading.Timer(timeout, kill)
            timer.start()
        tail: List[str] = []
        try:
            assert proc.stderr is not None
            for line in proc.stderr:
                line = line.rstrip("\n")
                if line.startswith("[traffic"):
                    log(line)
                tail = (tail + [line])[-15:]
            proc.wait()
        finally:
            if timer is not None:
                timer.cancel()
        if expired:
            raise RuntimeError(f"the traffic report did not finish within {timeout} s")
        if proc.returncode != 0:
            raise RuntimeError(f"the traffic report failed (exit {proc.returncode}):\n" + "\n".join(tail))
        out.seek(0)
        for line in out:
            if line.startswith(_MARK):
                return json.loads(line[len(_MARK):])
    raise RuntimeError("the traffic report printed no result line")


if __name__ == "__main__":
    sys.exit(_child(sys.argv[1:]))
