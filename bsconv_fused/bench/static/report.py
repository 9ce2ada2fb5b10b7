"""The static cost report of the layer suite: one row per (layer, layout, dtype, direction, backend).

    python -m bsconv_fused.bench.static [--arch sm_90|sm_80] [--dtypes fp16,bf16,fp32] [--filter '512->512']
                                        [--suite layers,variants] [--json FILE] [--markdown FILE]

Every kernel launch of the suite (N=64, NCHW and channels_last, forward and backward with the gradients of x, pw,
dw and bias) is compiled as the JIT compiles it and predicted with the static model; a direction row sums its
kernels. The predictions are lower bounds, not measurements. Suites (bsconv_fused.bench.suites.gpu_layer_suites):
"layers" (K=3, stride 1, every dtype; the default) and "variants" (K=5 stride 1 and K=3 stride 2, the first dtype
only). A row's `layer` ('128->128@56') is the same for every variant; its `kernel_size` and `stride` tell them apart.

Backends: each entry of BACKENDS turns (case, layout, direction, arch) into compiled kernels (CompiledLaunch: SASS,
registers, shared memory, grid, and the launch with its declared loops). Only triton today; a cuda backend adds an
entry that reads its nvcc cubins into the same structure.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from typing import Callable, Dict, List, Optional, Sequence

import torch

from .. import bounds as roofline
from ..suites import DTYPES, LayerCase, gpu_layer_suites
from .compile import CompiledLaunch, arch_number, compile_for_model
from .machines import MACHINES_FOR_ARCH, Machine
from .predict import KernelPrediction, predict_compiled

LAYOUTS = ("nchw", "channels_last")
DIRECTIONS = ("forward", "backward")
# backward of a BSConv-U layer in a network: gradients of x, pw, dw and bias (no mid_bias)
BACKWARD_MASK = (True, True, True, True, False)


def layer_tensors(case: LayerCase, layout: str):
    """Meta tensors (nothing allocated) of one suite layer: x, pw, dw, bias."""
    dt = case.torch_dtype
    x = torch.empty(case.N, case.C_in, case.H, case.W, dtype=dt, device="meta")
    if layout == "channels_last":
        x = x.to(memory_format=torch.channels_last)
    elif layout != "nchw":
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    pw = torch.empty(case.C_out, case.C_in, 1, 1, dtype=dt, device="meta")
    dw = torch.empty(case.C_out, 1, case.K, case.K, dtype=dt, device="meta")
    bias = torch.empty(case.C_out, dtype=dt, device="meta")
    return x, pw, dw, bias


def triton_launches(case: LayerCase, layout: str, direction: str, arch: int = 90):
    from ...triton.launch import backward_launches, forward_launches

    x, pw, dw, bias = layer_tensors(case, layout)
    s, p, d = (case.stride,) * 2, (case.padding,) * 2, (1, 1)
    # the forward plan depends on the architecture (register budgets): plan for the one compiled
    y, fwd = forward_launches(x, pw, dw, bias, None, s, p, d, arch=arch)
    if direction == "forward":
        return fwd
    if direction == "backward":
        bwd, _ = backward_launches(torch.empty_like(y), x, pw, dw, None, s, p, d, BACKWARD_MASK)
        return bwd
    raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")


def _triton_kernels(case: LayerCase, layout: str, direction: str, arch: int) -> List[CompiledLaunch]:
    return [compile_for_model(launch, arch) for launch in triton_launches(case, layout, direction, arch)]


BACKENDS: Dict[str, Callable[[LayerCase, str, str, int], List[CompiledLaunch]]] = {"triton": _triton_kernels}


def _tensor_rate(m: Machine, dtype: str) -> float:
    # fp32 runs TF32 tensor cores by default (torch.backends.cudnn.allow_tf32, like cuDNN and the launchers)
    prec = "tf32" if dtype == "fp32" else "f16"
    key = f"wgmma.{prec}" if f"wgmma.{prec}" in m.tensor_flops_s else f"mma.{prec}"
    return m.tensor_flops_s[key]


def roofline_us(case: LayerCase, direction: str, fused: bool, m: Machine) -> float:
    return 1e6 * roofline.bound_seconds(case, direction, fused, m.dram_bytes_s, _tensor_rate(m, case.dtype))


def make_row(case: LayerCase, layout: str, direction: str, backend: str, preds: Sequence[KernelPrediction],
             machines: Sequence[Machine]) -> dict:
    primary = machines[0].name
    total = {m.name: sum(p.bound_us(m.name) for p in preds) for m in machines}
    dominant = max(preds, key=lambda p: p.bound_us(primary))
    h200 = next((m.name for m in machines if m.name.startswith("H200")), None)
    unfused = roofline_us(case, direction, False, machines[0])
    row = dict(
        layer=case.layer, layout=layout, dtype=case.dtype, direction=direction, backend=backend,
        N=case.N, K=case.K, kernel_size=case.K, stride=case.stride,
        kernels=[p.as_dict() for p in preds],
        machine=primary,
        predicted_us=round(total[primary], 3),
        predicted_us_h200=round(total[h200], 3) if h200 else None,
        binding=f"{dominant.kernel.name}:{dominant.binding(primary)}",
        fused_roofline_us=round(roofline_us(case, direction, True, machines[0]), 3),
        unfused_roofline_us=round(unfused, 3),
        predicted_speedup=round(unfused / total[primary], 3),
    )
    if h200:
        row["unfused_roofline_us_h200"] = round(roofline_us(case, direction, False, machines[1]), 3)
        row["predicted_speedup_h200"] = round(row["unfused_roofline_us_h200"] / total[h200], 3)
    return row


SUITES = ("layers", "variants")


def suite(dtypes: Sequence[str], pattern: str = "", suites: Sequence[str] = ("layers",)) -> List[tuple]:
    """(case, layout) pairs of the named suites (SUITES, in that order), filtered by every space-separated token of
    pattern (matched against e.g. '512->512@14 N64 K3 s1 fp16 channels_last')."""
    bad = [s for s in suites if s not in SUITES]
    if bad or not suites:
        raise ValueError(f"suites must be a non-empty subset of {SUITES}, got {list(suites)}")
    named = gpu_layer_suites(list(dtypes), quick=False)
    cases = [c for name in suites for c in named[name]]
    pairs = [(c, lay) for c in cases for lay in LAYOUTS]
    toks = pattern.split()
    return [(c, lay) for c, lay in pairs if all(t in f"{c.name} {lay}" for t in toks)]


def build_report(arch="sm_90", dtypes: Sequence[str] = ("fp16",), pattern: str = "",
                 backends: Sequence[str] = ("triton",), directions: Sequence[str] = DIRECTIONS,
                 log=print, suites: Sequence[str] = ("layers",)) -> dict:
    """All rows; raises RuntimeError listing every kernel that could not be predicted (e.g. a loop mismatch)."""
    n = arch_number(arch)
    machines = MACHINES_FOR_ARCH[n]
    rows, errors = [], []
    t0 = time.perf_counter()
    pairs = suite(dtypes, pattern, suites)
    if not pairs:
        raise ValueError(f"--filter {pattern!r} matches no layer of the suite")
    for case, layout in pairs:
        for direction in directions:
            for backend in backends:
                label = f"{case.layer} K{case.K} s{case.stride} {case.dtype} {layout} {direction} {backend}"
                try:
                    preds = [predict_compiled(k, machines) for k in BACKENDS[backend](case, layout, direction, n)]
                except Exception as e:  # collect them all: one report run shows every kernel to fix
                    errors.append(f"{label}: {type(e).__name__}: {e}")
                    log(f"FAILED {label}: {e}")
                    continue
                row = make_row(case, layout, direction, backend, preds, machines)
                rows.append(row)
                log(f"{label}: {row['predicted_us']:.1f} us ({row['binding']}), unfused roofline "
                    f"{row['unfused_roofline_us']:.1f} us, predicted speedup {row['predicted_speedup']:.2f}x "
                    f"[{time.perf_counter() - t0:.0f} s]")
    if errors:
        raise RuntimeError("static report failed for:\n  " + "\n  ".join(errors))
    return dict(header=_header(n, machines, dtypes, pattern, time.perf_counter() - t0, suites), rows=rows)


def _git_commit() -> str:
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                             check=True).stdout.strip()
        # only the package decides the predictions: edits to tests or docs do not make a report "dirty"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", "bsconv_fused"], cwd=root,
                               capture_output=True, text=True).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _header(arch: int, machines, dtypes, pattern, seconds, suites=("layers",)) -> dict:
    import triton

    return dict(
        note="static predictions (lower bounds from compiled SASS), not measurements",
        arch=f"sm_{arch}", machines=[m.name for m in machines], dtypes=list(dtypes), filter=pattern,
        suites=list(suites),
        triton=triton.__version__, torch=torch.__version__, python=platform.python_version(),
        git_commit=_git_commit(), generated_utc=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        runtime_s=round(seconds, 1), method="docs/static-cost-model.md",
    )


def to_markdown(report: dict) -> str:
    h = report["header"]
    rows = report["rows"]
    machines = h["machines"]
    out = [f"# Static cost report, {h['arch']} ({', '.join(h['dtypes'])})", "",
           f"**These are static predictions, not measurements**: lower bounds computed from the compiled SASS "
           f"(method: {h['method']}); real kernels are expected 1.2-1.6x above them.", "",
           f"arch {h['arch']} | machines {', '.join(machines)} | triton {h['triton']} | torch {h['torch']} | "
           f"git {h['git_commit']} | generated {h['generated_utc']} in {h['runtime_s']:.0f} s", "",
           "Speedup = unfused roofline (two kernels at the DRAM/tensor roofline, t written and read) / predicted "
           "time: above 1 the fused kernels are predicted faster than an ideal unfused path.", "",
           f"| layer | dtype | layout | K | stride | direction | backend | predicted {machines[0]} (us) | "
           + (f"predicted {machines[1]} (us) | " if len(machines) > 1 else "")
           + "binding (kernel:resource) | fused roofline (us) | unfused roofline (us) | predicted speedup |",
           "|---|---|---|---:|---:|---|---|---:|" + ("---:|" if len(machines) > 1 else "") + "---|---:|---:|---:|"]
    for r in rows:
        out.append(f"| {r['layer']} | {r['dtype']} | {r['layout']} | {_k(r)} | {r['stride']} | {r['direction']} | "
                   f"{r.get('backend', 'triton')} | {r['predicted_us']:.1f} | "
                   + (f"{r['predicted_us_h200']:.1f} | " if len(machines) > 1 else "")
                   + f"{r['binding']} | {r['fused_roofline_us']:.1f} | {r['unfused_roofline_us']:.1f} | "
                   f"{r['predicted_speedup']:.2f}x |")
    m0 = machines[0]
    out += ["", f"## Kernels ({m0}; times in us per resource, the max is the bound)", "",
            "| layer | dtype | layout | K | stride | backend | kernel | grid | regs | stack | smem KB | "
            "CTA/SM (limit) | waves | loops (trips) | warp-instr/warp | " + " | ".join(_RES) + " | bound |",
            "|---|---|---|---:|---:|---|---|---:|---:|---:|---:|---|---:|---|---:|" + "---:|" * len(_RES) + "---|"]
    for r in rows:
        for k in r["kernels"]:
            o = k["occupancy"][m0]
            t = k["times_us"][m0]
            loops = ", ".join(f"{lp['name']} {lp['trips']:g}" for lp in k["loops"]) or "-"
            out.append(f"| {r['layer']} | {r['dtype']} | {r['layout']} | {_k(r)} | {r['stride']} | "
                       f"{r.get('backend', 'triton')} | {k['kernel']} | "
                       f"{k['ctas']} | {k['regs']} | "
                       f"{k['stack_bytes']} | {k['shared_bytes'] / 1024:.0f} | {o['ctas_per_sm']} ({o['limiter']}) | "
                       f"{o['waves']:.2f} | {loops} | {k['counts_per_warp']['issued']:.0f} | "
                       + " | ".join(f"{t[x]:.1f}" for x in _RES)
                       + f" | **{k['bound_us'][m0]:.1f}** ({k['binding'][m0]}) |")
    return "\n".join(out) + "\n"


_RES = ("issue", "fma", "alu", "xu", "shfl", "lsu", "smem", "tensor", "l2", "dram")


def _k(row: dict) -> int:
    return row.get("kernel_size", row.get("K"))  # rows of reports written before kernel_size existed carry only K


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bsconv_fused.bench.static", description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="sm_90", choices=("sm_90", "sm_80"))
    ap.add_argument("--dtypes", default="fp16", help="comma-separated: fp16,bf16,fp32")
    ap.add_argument("--filter", default="", help="keep the layers whose name contains every token, e.g. '512->512 "
                                                 "channels_last'")
    ap.add_argument("--backends", default="triton", help=f"comma-separated, of {tuple(BACKENDS)}")
    ap.add_argument("--suite", default="layers", help=f"comma-separated, of {SUITES}: 'layers' (K3 stride 1, the "
                                                      "default), 'variants' (K5 stride 1 and K3 stride 2)")
    ap.add_argument("--json", help="write the rows (and a header) as JSON to this file")
    ap.add_argument("--markdown", help="write the report as markdown to this file")
    args = ap.parse_args(argv)
    dtypes = [d for d in args.dtypes.split(",") if d]
    bad = [d for d in dtypes if d not in DTYPES or d == "fp64"]
    if bad or not dtypes:
        ap.error(f"--dtypes must be a comma-separated subset of fp16,bf16,fp32, got {args.dtypes!r}")
    backends = [b for b in args.backends.split(",") if b]
    if not backends or any(b not in BACKENDS for b in backends):
        ap.error(f"--backends must be a comma-separated subset of {','.join(BACKENDS)}, got {args.backends!r}")
    suites = [s for s in args.suite.split(",") if s]
    if not suites or any(s not in SUITES for s in suites):
        ap.error(f"--suite must be a comma-separated subset of {','.join(SUITES)}, got {args.suite!r}")
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    try:
        report = build_report(args.arch, dtypes, args.filter, backends, log=log, suites=suites)
    except (RuntimeError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    md = to_markdown(report)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
            f.write("\n")
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(md)
    if not args.json and not args.markdown:
        print(md)
    return 0
