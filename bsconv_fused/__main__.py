"""The main job: ``python -m bsconv_fused``.

1. reports the backends present and why the others are not;
2. checks every available backend against a float64 reference on a small layer suite (all devices present), and
   saves the result (parity.json) beside the benchmark's;
3. benchmarks the fused backends against every baseline on the best device present (the GPU, else the CPU with the
   extension's CPU kernels), layers and whole networks, re-measures noisy rows interleaved with their baseline,
   writes JSON, CSV, a markdown summary and PNG plots, and ends with one verdict line per direction: the geometric
   mean speedup of the fused path over the best baseline, with the share of noisy cases;
4. on request (``--suites ...,traffic`` or ``--traffic on``), counts what the Triton kernels move and compute under
   the interpreter (the traffic report: minutes on a CPU, no GPU needed).

Measurement method and the bounds: docs/performance.md. ``--quick`` is the CI mode (a few cases, short timings, no
max-autotune). Exit status 1 when a backend fails the parity check or a fused contender is wrong or errors in the
benchmark.
"""
from __future__ import annotations

import argparse
import datetime
import sys
import time
from pathlib import Path
from typing import List, Optional

SUITES = ("layers", "latency", "variants", "sweep", "networks", "traffic")
DEFAULT_SUITES = ("layers", "latency", "variants", "networks")


def _csv(kind: str, choices=None):
    def parse(s: str) -> List[str]:
        items = [v.strip() for v in s.split(",") if v.strip()]
        if not items:
            raise argparse.ArgumentTypeError(f"{kind} must be a comma-separated list, got {s!r}")
        if choices is not None:
            bad = [v for v in items if v not in choices]
            if bad:
                raise argparse.ArgumentTypeError(f"{kind} must be among {', '.join(choices)}; got {', '.join(bad)}")
        return items

    return parse


def build_parser() -> argparse.ArgumentParser:
    from .bench.suites import DIRECTIONS

    ap = argparse.ArgumentParser(prog="python -m bsconv_fused", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="CI mode: few cases, short timings, no max-autotune")
    ap.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto",
                    help="where to benchmark (default: the GPU when present, else the CPU)")
    ap.add_argument("--suites", type=_csv("suites", SUITES), default=None,
                    help=f"comma-separated among {', '.join(SUITES)} (default: {','.join(DEFAULT_SUITES)}; "
                         "'sweep' is the full N x K x stride x dtype product of docs/performance.md, hours on a GPU; "
                         "'traffic' is the Triton kernels' traffic counted under the interpreter)")
    ap.add_argument("--dtypes", type=_csv("dtypes", ("fp16", "bf16", "fp32")), default=None,
                    help="comma-separated among fp16, bf16, fp32 (default: all three on a GPU, fp32 on the CPU)")
    ap.add_argument("--directions", type=_csv("directions", DIRECTIONS), default=list(DIRECTIONS),
                    help="layer directions: forward, backward, forward+backward (default: all)")
    ap.add_argument("--contenders", type=_csv("contenders"), default=None,
                    help="keep only these contenders, e.g. triton-cl,eager-cl,dense")
    ap.add_argument("--filter", default="", help="keep layer cases whose name contains every word, e.g. '@56 N64'")
    ap.add_argument("--no-compile", action="store_true", help="leave out the torch.compile baselines")
    ap.add_argument("--no-max-autotune", action="store_true",
                    help="leave out torch.compile max-autotune (it runs in the 'layers' suite only: it autotunes "
                         "for minutes per shape)")
    ap.add_argument("--traffic", choices=("on", "off"), default="off",
                    help="also run the Triton traffic report under the interpreter (same as adding 'traffic' to "
                         "--suites; minutes on a CPU)")
    ap.add_argument("--no-parity", action="store_true", help="skip the parity check")
    ap.add_argument("--no-bench", action="store_true", help="skip the benchmark (backend report and parity only)")
    ap.add_argument("--out", type=Path, default=None,
                    help="results folder (default: benchmarks/results/tmp/<device>-<date> inside a checkout, "
                         "else ./bsconv_fused-results/<device>-<date>)")
    ap.add_argument("--no-save", action="store_true", help="print only, write no files")
    return ap


def _say(msg: str = "") -> None:
    print(msg, flush=True)


def report_backends() -> None:
    from . import __version__
    from .backends import available_backends

    import torch

    _say(f"bsconv_fused {__version__} | torch {torch.__version__} | CUDA GPU: "
         f"{torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none'}")
    _say("Backends:")
    for name, st in available_backends().items():
        _say(f"  {name:<7}{'yes' if st.available else 'no ':<5}{st.reason}")


def _out_dir(args, machine) -> Optional[Path]:
    """Where results go (created on the first write, so a run that has nothing to save leaves no folder)."""
    if args.no_save:
        return None
    from .bench.machine import device_slug

    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d-%H%M%S")
    if args.out is not None:
        return args.out
    if Path("benchmarks/results").is_dir():
        return Path("benchmarks/results/tmp") / f"{device_slug(machine)}-{stamp}"
    return Path("bsconv_fused-results") / f"{device_slug(machine)}-{stamp}"


def bench_suites(args) -> List[str]:
    """The timed suites this run asks for ('traffic' is not timed)."""
    if args.suites is None:
        return ["layers", "networks"] if args.quick else list(DEFAULT_SUITES)
    return [s for s in args.suites if s != "traffic"]


def run_benchmark(args, device, rows_out: list, save, extra: dict) -> None:
    import torch

    from .bench import contenders as C
    from .bench import layers, networks, suites
    from .bench.results import RunInfo, mark_noisy
    from .bench.timing import copy_bandwidth, gemm_throughput

    from .bench import report

    dtypes = args.dtypes or (["fp16", "bf16", "fp32"] if device.type == "cuda" else ["fp32"])
    chosen = bench_suites(args)
    torch.backends.cudnn.benchmark = True  # the eager baselines as a tuned user would run them
    _say(f"\nBenchmark on {device} ({'quick' if args.quick else 'full'}), dtypes {','.join(dtypes)}, "
         f"suites {','.join(chosen)}")
    dropped = C.dropped(device, quick=args.quick, compile_baselines=not args.no_compile,
                        max_autotune=not args.no_max_autotune)
    if args.contenders:
        dropped = [(n, w) for n, w in dropped if n in args.contenders]
    for name, why in dropped:
        _say(f"  contender {name} left out: {why}")
    extra["dropped_contenders"] = [dict(contender=n, reason=w) for n, w in dropped]
    bw = copy_bandwidth(device, quick=args.quick)
    info = RunInfo(str(device), bw, {d: gemm_throughput(device, suites.DTYPES[d], quick=args.quick) for d in dtypes})
    flops = ", ".join(f"{d} {v / 1e12:.0f} TFLOP/s" for d, v in info.gemm_flops.items() if v)
    _say(f"measured copy bandwidth {bw / 1e9:.1f} GB/s" + (f"; GEMM {flops}" if flops else
                                                           "; bounds are memory-only on the CPU"))
    save(info)
    if device.type == "cuda":
        layer_suites = suites.gpu_layer_suites(dtypes, args.quick)
        if "sweep" in chosen:
            layer_suites["sweep"] = suites.gpu_sweep(dtypes)
    else:
        layer_suites = suites.cpu_layer_suites(dtypes, args.quick)
        if "sweep" in chosen:
            layer_suites["sweep"] = [c.with_(N=1) for c in suites.gpu_sweep(dtypes)]
    missing = [s for s in chosen if s != "networks" and s not in layer_suites]
    if missing:
        _say(f"note: suite(s) {', '.join(missing)} exist on the GPU only; the CPU runs "
             f"{', '.join(list(layer_suites) + ['networks'])}")
    cons = C.contenders(device, quick=args.quick, include=args.contenders,
                        compile_baselines=not args.no_compile, max_autotune=not args.no_max_autotune)

    def on_case(rows):
        mark_noisy(rows)
        rows_out.extend(rows)
        _say(report.format_rows(rows))
        save(info)

    for name, cases in layer_suites.items():
        if name not in chosen:
            continue
        if args.filter:
            cases = suites.filter_cases(cases, args.filter)
        # max-autotune benchmarks Triton templates for minutes per shape and direction: the headline suite only
        suite_cons = cons if name == "layers" else [c for c in cons if c.name != "compile-max-autotune"]
        layers.run_suite(cases, name, device, suite_cons, args.directions, info, quick=args.quick, log=_say,
                         on_case=on_case)
    if "networks" in chosen:
        ncons = networks.net_contenders(device, compile_baselines=not args.no_compile, quick=args.quick,
                                        include=args.contenders)
        networks.run_suite(networks.network_cases(device, dtypes, args.quick), device, ncons, quick=args.quick,
                           log=_say, on_case=on_case)


def run_traffic(args, out, extra: dict, failed: list) -> None:
    from .bench import traffic_report

    _say("\nTraffic of the Triton kernels under the interpreter (multiples of the fused bounds; progress streams, "
         "each layer takes from seconds to minutes):")
    try:
        import triton  # noqa: F401
        no_triton = None
    except Exception as e:  # absent or broken install: the report needs its interpreter
        no_triton = f"{type(e).__name__}: {e}"
    if no_triton:
        _say(f"  skipped: triton is not importable ({no_triton})")
        return
    try:
        trows = traffic_report.run(args.quick, log=_say)
    except RuntimeError as e:
        _say(f"  failed: {e}")
        failed.append("traffic report")
        return
    extra["traffic"] = trows
    _say(traffic_report.format_table(trows, markdown=False))
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "traffic.md").write_text(traffic_report.format_table(trows) + "\n")


def main(argv=None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    import torch

    from .bench import contenders as C
    from .bench import networks as NW

    if args.contenders:
        known = set(C.NAMES) | set(NW.NAMES)
        unknown = [c for c in args.contenders if c not in known]
        if unknown:
            ap.error(f"--contenders must be among {', '.join(sorted(known))}; got {', '.join(unknown)}")
    if args.device == "cuda" and not torch.cuda.is_available():
        _say("--device cuda: no CUDA GPU is visible")
        return 2

    from .bench import parity, report
    from .bench.machine import machine_info

    t_start = time.perf_counter()
    failed = []
    device = torch.device("cuda" if args.device != "cpu" and torch.cuda.is_available() else "cpu")
    machine = machine_info(device)
    out = _out_dir(args, machine)
    rows: list = []
    extra: dict = {}
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    report_backends()
    if not args.no_parity:
        _say("\nParity vs float64 (output and all gradients, small layer suite):")
        results = parity.run()
        if not parity.passed(results):
            failed.append("parity check")
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
            parity.write_json(out / "parity.json", machine, results)

    def save(info=None):
        if out is None:
            return
        if info is not None:
            save.info = info
        out.mkdir(parents=True, exist_ok=True)
        report.write_json(out / "results.json", machine, getattr(save, "info", None), rows, settings, extra)
        report.write_csv(out / "results.csv", machine, rows)

    want_bench = not args.no_bench and bool(bench_suites(args))
    if want_bench:
        if device.type == "cpu":
            _say("\nNo GPU: CPU numbers below. The cuda-* contenders are the compiled extension's OpenMP CPU kernels "
                 "(backend 'cuda' on CPU tensors) against the two-layer path; absolute times count only on a GPU, "
                 "quote ratios. Peak memory is measured on CUDA only (the CPU allocator keeps no peak statistic).")
        run_benchmark(args, device, rows, save, extra)
        bad = sorted({f"{r.contender} on {r.case} {r.direction}" for r in rows
                      if r.kind == "fused" and r.status in ("wrong", "error")})
        if bad:
            failed.append("fused contenders wrong or failing: " + "; ".join(bad[:10]) +
                          (f" (+{len(bad) - 10} more)" if len(bad) > 10 else ""))
    if args.traffic == "on" or (args.suites is not None and "traffic" in args.suites):
        run_traffic(args, out, extra, failed)
    verdict = []
    if rows:
        _say("\nSummary (fastest correct fused contender vs fastest correct baseline; 'noisy': p80/p20 above "
             "1.3x even after an interleaved re-measurement):")
        _say(report.format_summary(rows))
        where = f"{device.type} ({machine.get('gpu') or machine.get('cpu')})"
        verdict = report.verdict(rows, where)
    if out is not None and (rows or extra.get("traffic")):
        save()
        if rows:
            (out / "summary.md").write_text(
                f"# bsconv_fused benchmark summary: {machine.get('gpu') or machine.get('cpu')}, "
                f"{machine['date_utc']}, torch {machine['torch']}, git {machine.get('git_commit')}\n\n"
                + report.format_summary(rows, markdown=True) + "\n\n"
                + "\n".join(f"- {v}" for v in verdict) + "\n")
            files, note = report.write_plots(out, rows, str(machine.get("gpu") or machine.get("cpu")))
            if note:
                _say(note)
    if out is not None and out.exists():
        _say(f"\nResults in {out}/")
    if verdict:
        _say("")
        for v in verdict:
            _say(v)
    _say(f"Done in {time.perf_counter() - t_start:.0f} s.")
    if failed:
        _say("FAILED: " + " | ".join(failed))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
