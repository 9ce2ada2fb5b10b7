"""First-GPU calibration: time every kernel launch of the layer suite and print it next to its static prediction.

    python -m bsconv_fused.bench.static.calibrate [--dtypes fp16] [--filter ...] [--json FILE] [--reps 20]

Each Launch of the suite (N=64, K=3, stride 1, NCHW and channels_last, forward and backward) runs on real tensors
and is timed alone with CUDA events (median of --reps after warm-up; the backward's partial-sum reduction, a
torch op, is not a kernel of the model and is not timed). The ratio measured / predicted is what the model misses:
latency, bank conflicts, DRAM efficiency (docs/static-cost-model.md expects 1.2-1.6x for 8 warps per SM). The
prediction is for the machine of the same architecture whose DRAM bandwidth is closest to the card's (H100 vs H200).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from typing import List, Optional, Sequence

import torch

from ...triton.launch import backward_launches, forward_launches
from .compile import compile_for_model
from .machines import MACHINES_FOR_ARCH
from .predict import predict_compiled
from .report import BACKWARD_MASK, DIRECTIONS, suite


def _tensors(case, layout: str):
    g = torch.Generator(device="cuda").manual_seed(0)
    dt = case.torch_dtype

    def rnd(*shape):
        return torch.randn(*shape, device="cuda", dtype=dt, generator=g)

    x = rnd(case.N, case.C_in, case.H, case.W)
    if layout == "channels_last":
        x = x.to(memory_format=torch.channels_last)
    return x, rnd(case.C_out, case.C_in, 1, 1), rnd(case.C_out, 1, case.K, case.K), rnd(case.C_out)


def _launches(case, layout: str, direction: str):
    x, pw, dw, bias = _tensors(case, layout)
    s, p, d = (case.stride,) * 2, (case.padding,) * 2, (1, 1)
    y, fwd = forward_launches(x, pw, dw, bias, None, s, p, d)
    if direction == "forward":
        return fwd
    bwd, _ = backward_launches(torch.randn_like(y), x, pw, dw, None, s, p, d, BACKWARD_MASK)
    return bwd


def time_launch(launch, reps: int, warmup: int = 3) -> float:
    """Median microseconds of one launch, each timed alone with CUDA events."""
    for _ in range(warmup):
        launch.run()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        launch.run()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) * 1e3)
    return statistics.median(times)


def _machine_for_card():
    major, minor = torch.cuda.get_device_capability()
    arch = 90 if major >= 9 else 80
    machines = MACHINES_FOR_ARCH[arch]
    name = torch.cuda.get_device_name()
    match = [m for m in machines if m.name.split()[0] in name]
    return arch, machines, (match[0] if match else machines[0])


def calibrate(dtypes: Sequence[str], pattern: str, reps: int, log=print) -> dict:
    arch, machines, card = _machine_for_card()
    rows: List[dict] = []
    t0 = time.perf_counter()
    for case, layout in suite(dtypes, pattern):
        for direction in DIRECTIONS:
            for launch in _launches(case, layout, direction):
                pred = predict_compiled(compile_for_model(launch, arch), machines)
                measured = time_launch(launch, reps)
                bound = pred.bound_us(card.name)
                row = dict(layer=case.layer, dtype=case.dtype, layout=layout, direction=direction,
                           kernel=pred.kernel.name, measured_us=round(measured, 2), predicted_us=round(bound, 2),
                           binding=pred.binding(card.name), ratio=round(measured / bound, 3) if bound else None,
                           times_us={r: round(v, 2) for r, v in pred.times_us[card.name].items()})
                rows.append(row)
                log(f"{case.layer:>13} {case.dtype} {layout:<13} {direction:<8} {row['kernel']:<26} measured "
                    f"{measured:9.1f} us  predicted {bound:9.1f} us ({row['binding']:<6})  x{row['ratio']:.2f}  "
                    f"[{time.perf_counter() - t0:.0f} s]")
            torch.cuda.empty_cache()
    ratios = [r["ratio"] for r in rows if r["ratio"]]
    summary = dict(kernels=len(rows), ratio_median=round(statistics.median(ratios), 3) if ratios else None,
                   ratio_min=min(ratios, default=None), ratio_max=max(ratios, default=None))
    log(f"measured / predicted over {len(rows)} kernels: median x{summary['ratio_median']}, "
        f"range x{summary['ratio_min']} - x{summary['ratio_max']} (the static bound is a lower bound: < 1 means the "
        f"model is wrong for that kernel)")
    return dict(header=dict(card=torch.cuda.get_device_name(), model_machine=card.name, arch=f"sm_{arch}",
                            torch=torch.__version__, reps=reps, runtime_s=round(time.perf_counter() - t0, 1)),
                summary=summary, rows=rows)


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bsconv_fused.bench.static.calibrate",
                                 description=__doc__.splitlines()[0])
    ap.add_argument("--dtypes", default="fp16")
    ap.add_argument("--filter", default="")
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--json", help="write the rows as JSON to this file")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("error: calibration times kernels and needs a CUDA GPU (none visible to torch)", file=sys.stderr)
        return 2
    if args.reps < 1:
        ap.error(f"--reps must be >= 1, got {args.reps}")
    result = calibrate([d for d in args.dtypes.split(",") if d], args.filter, args.reps,
                       log=lambda s: print(s, flush=True))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
            f.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
