"""Timing: GPU latency with CUDA events and a flushed L2 (triton.testing.do_bench), CPU wall clock with
torch.utils.benchmark, the device-to-device copy bandwidth and GEMM throughput the bounds are scaled by, and the
peak memory of a training step.
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence

import torch


@dataclass(frozen=True)
class Timing:
    """Latency in seconds: median and the 20th / 80th percentiles over repetitions."""

    median: float
    p20: float
    p80: float
    reps: int


def _quantiles(samples: List[float]) -> Timing:
    if not samples:
        raise ValueError("no timing samples")
    s = sorted(samples)
    if len(s) == 1:
        return Timing(s[0], s[0], s[0], 1)
    q = statistics.quantiles(s, n=10, method="inclusive")  # deciles: q[1] = p20, q[7] = p80
    return Timing(statistics.median(s), q[1], q[7], len(s))


def time_cuda(fn: Callable[[], object], *, warmup_ms: float = 25, rep_ms: float = 100) -> Timing:
    """Median/p20/p80 of ``fn`` on the current CUDA stream; L2 is flushed before every repetition.

    triton.testing.do_bench times each repetition with CUDA events and zeroes a buffer larger than L2 between them,
    so a small layer cannot read its inputs from cache. Without Triton, the same loop is done here.
    """
    try:
        from triton.testing import do_bench
    except ImportError:
        return _time_cuda_events(fn, warmup_ms=warmup_ms, rep_ms=rep_ms)
    med, p20, p80 = do_bench(fn, warmup=warmup_ms, rep=rep_ms, quantiles=[0.5, 0.2, 0.8])
    reps = max(1, int(rep_ms / max(med, 1e-3)))
    return Timing(med * 1e-3, p20 * 1e-3, p80 * 1e-3, reps)


def _time_cuda_events(fn, *, warmup_ms: float, rep_ms: float) -> Timing:
    return _quantiles(_cuda_samples(fn, warmup_ms=warmup_ms, rep_ms=rep_ms))


def _cuda_samples(fn, *, warmup_ms: float, rep_ms: float) -> List[float]:
    """Seconds per repetition of ``fn`` with CUDA events, L2 flushed before each."""
    flush = torch.empty(256 * 1024 * 1024 // 4, dtype=torch.int32, device="cuda")  # > L2 of any current card
    fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(5):
        fn()
    end.record()
    torch.cuda.synchronize()
    est = max(start.elapsed_time(end) / 5, 1e-3)
    n_warm, n_rep = max(1, int(warmup_ms / est)), max(5, int(rep_ms / est))
    for _ in range(n_warm):
        fn()
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(n_rep)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(n_rep)]
    for s, e in zip(starts, ends):
        flush.zero_()
        s.record()
        fn()
        e.record()
    torch.cuda.synchronize()
    return [s.elapsed_time(e) * 1e-3 for s, e in zip(starts, ends)]


def time_cpu(fn: Callable[[], object], *, min_run_time: float = 0.2) -> Timing:
    """Wall-clock median/p20/p80 of ``fn`` on the CPU (torch.utils.benchmark handles warm-up and threads)."""
    return _quantiles(_cpu_samples(fn, min_run_time=min_run_time))


def _cpu_samples(fn, *, min_run_time: float, min_samples: int = 5, max_seconds: float = 2.0) -> List[float]:
    """Per-call seconds of blocks of calls. A slow call (tens of ms) fills ``min_run_time`` in one or two blocks,
    whose p20-p80 would say nothing about the spread: blocks are added until there are ``min_samples`` of them or
    ``max_seconds`` have passed."""
    import time

    from torch.utils.benchmark import Timer

    timer = Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    t0 = time.perf_counter()
    times = list(timer.blocked_autorange(min_run_time=min_run_time).times)
    while len(times) < min_samples and time.perf_counter() - t0 < max_seconds:
        times += timer.blocked_autorange(min_run_time=min_run_time / min_samples).times
    return times


def time_fn(fn: Callable[[], object], device: torch.device, *, quick: bool, long: bool = False) -> Timing:
    """Time ``fn`` on ``device``. ``long`` gives calls of many milliseconds (whole networks) a 10x larger budget so
    the percentiles rest on dozens of repetitions, not two."""
    scale = 10 if long else 1
    if device.type == "cuda":
        return time_cuda(fn, warmup_ms=(10 if quick else 25) * scale, rep_ms=(30 if quick else 100) * scale)
    return time_cpu(fn, min_run_time=(0.05 if quick else 0.2) * scale)


def time_interleaved(fns: Sequence[Callable[[], object]], device: torch.device, *, quick: bool,
                     rounds: int = 5) -> List[Timing]:
    """Time several functions in alternation: ``rounds`` short blocks of each in turn, pooled per function.

    A slow phase of the machine (another process, frequency scaling, a page-cache flush) then hits every function
    alike instead of one of them, so their ratio holds even when each spread is wide. The total budget per function
    is that of one :func:`time_fn` call."""
    samples: List[List[float]] = [[] for _ in fns]
    for _ in range(rounds):
        for i, fn in enumerate(fns):
            if device.type == "cuda":
                samples[i] += _cuda_samples(fn, warmup_ms=(10 if quick else 25) / rounds,
                                            rep_ms=(30 if quick else 100) / rounds)
            else:
                samples[i] += _cpu_samples(fn, min_run_time=(0.05 if quick else 0.2) / rounds)
    return [_quantiles(s) for s in samples]


def copy_bandwidth(device: torch.device, *, quick: bool) -> float:
    """Device-to-device copy bandwidth in bytes/s (read + write) measured now: the denominator of every
    bandwidth fraction. 256 MiB buffers on a GPU (far beyond L2), 64 MiB on the CPU."""
    n = (256 if device.type == "cuda" else 64) * 1024 * 1024 // 4
    src = torch.randn(n, device=device)
    dst = torch.empty_like(src)
    t = time_fn(lambda: dst.copy_(src), device, quick=quick)
    return 2 * src.numel() * src.element_size() / t.median


def gemm_throughput(device: torch.device, dtype: torch.dtype, *, quick: bool) -> Optional[float]:
    """Dense matmul FLOP/s in ``dtype`` measured now (fp32 with TF32 allowed, as cuDNN convolutions are); the
    compute roof of the bounds. None on the CPU: its convolutions are far from any roof worth quoting."""
    if device.type != "cuda":
        return None
    n = 4096 if quick else 8192
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    prev = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        t = time_fn(lambda: a @ b, device, quick=quick)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = prev
    return 2 * n ** 3 / t.median


def peak_memory(fn: Callable[[], object], device: torch.device) -> Optional[int]:
    """Bytes allocated at the peak of one call of ``fn`` above what was allocated before it (activations saved for
    backward, workspaces, gradients). CUDA only: the CPU allocator keeps no such statistic, so None there."""
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - base
