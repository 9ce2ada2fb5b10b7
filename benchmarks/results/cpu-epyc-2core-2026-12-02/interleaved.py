"""Interleaved CPU timing of the extension's CPU kernels against the two-layer path (NCHW and channels_last).

The package benchmark (python -m bsconv_fused --device cpu) times one contender after another at N=1; on a machine
shared with other jobs the load drifts between contenders, so this driver interleaves them: every round times every
contender of a case once (in a fresh random order), each sample is the mean of enough calls to last ~20 ms, and the
median / p20 / p80 are taken over the rounds. Two clocks per sample: wall time, and the CPU time the process
spent (thread CPU time when --threads 1: a single-threaded call's CPU time does not count the time the scheduler
gave to other jobs, so it is the robust number on a shared machine; with more threads it is the sum over threads,
spin-waits included). Same cases (the layer table, maps capped at 56), inputs and calls as
bsconv_fused.bench (forward under no_grad; forward+backward = torch.autograd.grad of every input, as in training).

    python benchmarks/results/cpu-epyc-2core-2026-12-02/interleaved.py --out results.json [--N 1,8] [--rounds 9]
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from bsconv_fused import bsconv_u
from bsconv_fused.bench.machine import machine_info
from bsconv_fused.bench.suites import TABLE_LAYERS, LayerCase

CONTENDERS = {  # name -> (fused?, channels_last)
    "cuda-nchw": (True, False), "cuda-cl": (True, True), "eager-nchw": (False, False), "eager-cl": (False, True),
}


def layer_fn(case: LayerCase, fused: bool):
    s, p = case.stride, case.padding
    if fused:
        return lambda x, pw, dw, b: bsconv_u(x, pw, dw, b, s, p, backend="cuda")
    return lambda x, pw, dw, b: F.conv2d(F.conv2d(x, pw), dw, b, s, p, 1, dw.shape[0])


def make_call(case: LayerCase, name: str, direction: str, inputs, dy):
    fused, cl = CONTENDERS[name]
    fn = layer_fn(case, fused)
    fmt = torch.channels_last if cl else torch.contiguous_format
    xs = [t.detach().contiguous(memory_format=fmt) if t.dim() == 4 else t.detach() for t in inputs]
    if direction == "forward":
        def call():
            with torch.no_grad():
                return fn(*xs)
        return call
    xs = [t.requires_grad_(True) for t in xs]
    g = dy.contiguous(memory_format=fmt)
    return lambda: torch.autograd.grad(fn(*xs), xs, g)


def quantiles(v):
    q = statistics.quantiles(sorted(v), n=10, method="inclusive")
    return statistics.median(v), q[1], q[7]


def measure(case: LayerCase, direction: str, rounds: int, sample_s: float, cpu_clock):
    gen = torch.Generator().manual_seed(0)
    dt = case.torch_dtype
    x = torch.randn(case.N, case.C_in, case.H, case.W, generator=gen).to(dt)
    pw = (torch.randn(case.C_out, case.C_in, 1, 1, generator=gen) / case.C_in ** 0.5).to(dt)
    dw = (torch.randn(case.C_out, 1, case.K, case.K, generator=gen) / case.K).to(dt)
    b = torch.randn(case.C_out, generator=gen).to(dt)
    dy = torch.randn(case.N, case.C_out, case.Ho, case.Wo, generator=gen).to(dt)
    calls = {n: make_call(case, n, direction, (x, pw, dw, b), dy) for n in CONTENDERS}
    reps = {}
    for n, c in calls.items():  # warm-up and calls per sample
        c()
        t0 = time.perf_counter()
        c()
        reps[n] = max(1, int(sample_s / max(time.perf_counter() - t0, 1e-6)))
    samples = {n: ([], []) for n in calls}
    order = list(calls)
    for _ in range(rounds):
        random.shuffle(order)
        for n in order:
            c0, t0 = cpu_clock(), time.perf_counter()
            for _ in range(reps[n]):
                calls[n]()
            t1, c1 = time.perf_counter(), cpu_clock()
            samples[n][0].append((t1 - t0) / reps[n])
            samples[n][1].append((c1 - c0) / reps[n])
    return samples


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--N", default="1,8")
    ap.add_argument("--directions", default="forward,forward+backward")
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--sample-ms", type=float, default=20.0)
    ap.add_argument("--dtype", default="fp32")
    ap.add_argument("--filter", default="", help="keep cases whose name contains every word")
    ap.add_argument("--cap", type=int, default=56, help="cap on H = W (as the package's CPU suite)")
    ap.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: leave as is)")
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    random.seed(0)
    if a.threads:
        torch.set_num_threads(a.threads)
    threads = torch.get_num_threads()
    cpu_clock = time.thread_time if threads == 1 else time.process_time
    clock = "cpu" if threads == 1 else "wall"  # the clock the speedup is taken on
    cases = [LayerCase(int(n), ci, co, min(hw, a.cap), min(hw, a.cap), 3, 1, a.dtype)
             for n in a.N.split(",") for ci, co, hw in TABLE_LAYERS]
    cases = [c for c in cases if all(w in c.name for w in a.filter.split())]
    rows = []
    for case in cases:
        for d in a.directions.split(","):
            s = measure(case, d, a.rounds, a.sample_ms * 1e-3, cpu_clock)
            row = {"case": case.name, **case.as_dict(), "direction": d, "rounds": a.rounds, "threads": threads,
                   "clock": clock}
            for n, (wall, cpu) in s.items():
                m, p20, p80 = quantiles(wall)
                cm, c20, c80 = quantiles(cpu)
                row[n] = {"wall": {"median_us": m * 1e6, "p20_us": p20 * 1e6, "p80_us": p80 * 1e6},
                          "cpu": {"median_us": cm * 1e6, "p20_us": c20 * 1e6, "p80_us": c80 * 1e6}}
            med = lambda n: row[n][clock]["median_us"]
            best_base = min(("eager-nchw", "eager-cl"), key=med)
            best_fused = min(("cuda-nchw", "cuda-cl"), key=med)
            row["best_baseline"], row["best_fused"] = best_base, best_fused
            row["speedup"] = med(best_base) / med(best_fused)
            rows.append(row)
            f, b = row[best_fused][clock], row[best_base][clock]
            print(f"{case.name:30s} {d:16s} {clock} fused {best_fused:9s} {f['median_us']:9.1f} "
                  f"[{f['p20_us']:.0f}, {f['p80_us']:.0f}] us  base {best_base:10s} {b['median_us']:9.1f} "
                  f"[{b['p20_us']:.0f}, {b['p80_us']:.0f}] us  x{row['speedup']:.2f}", flush=True)
    with open(a.out, "w") as f:
        json.dump({"machine": machine_info(torch.device("cpu")), "shared_machine": True, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    sys.exit(main())
