"""Throughput tables of the GPUs the static report predicts for, as data, with their sources.

Per-SM rates are in warp-instructions (or bytes, or wavefronts) per SM per clock. Sources:
- [PG] CUDA C++ Programming Guide, "Arithmetic Instructions" throughput table (results per clock per SM) for
  compute capability 8.0 and 9.0: fp32 add/mul/fma 64 (8.0) / 128 (9.0) -> 2 / 4 warp-instructions; 32-bit integer
  multiply-add 64 -> 2 (on sm_90 IMAD shares the FMA pipe, "heavy" half only); 32-bit integer add, logical,
  shift, compare, min/max 64 -> 2; warp shuffle 32 -> 1; type conversions 16 -> 0.5.
- [WP] NVIDIA H100 Tensor Core GPU Architecture whitepaper and A100 whitepaper: SM counts, 4 schedulers per SM
  (one warp-instruction issued per scheduler per clock), 64K 32-bit registers, 64 resident warps, 32 resident
  CTAs, 228 KB (H100) / 164 KB (A100) shared memory per SM with 1 KB reserved per CTA, 128 B/clock shared memory
  and L1 bandwidth per SM, dense FP16 tensor 989 TFLOP/s (H100 SXM), 312 TFLOP/s (A100).
- [PERF] docs/performance.md: HBM bandwidth measured with a device-to-device copy: 3.0 TB/s (H100 SXM, 3.35 spec),
  4.3 TB/s (H200, 4.8 spec).
- [EST] The project's static estimate (docs/static-cost-model.md, "Throughput table"): sustained clock under load
  1.755 GHz (H100/H200); wgmma fp16 throughput 700 TFLOP/s (71% of the 989 spec), mma.sync 490 TFLOP/s on Hopper
  (about half of the dense peak; uncertain); L2 -> SM 7 TB/s (optimistic: public microbenchmarks of H100 report
  5.5-7). Assumptions, not measurements: the first GPU run calibrates them (benchmarks/run_gpu.sh).
- [A100-EST] A100 SXM 80 GB: 1.41 GHz boost [WP], 2.04 TB/s HBM spec of which 90% assumed achievable (1.83),
  mma.sync fp16 312 TFLOP/s spec at the same 71% (220), L2 -> SM 4.0 TB/s (assumption). No A100 number here is
  measured.
TF32 tensor throughput is half the fp16 figure on both architectures [WP].
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Tuple


@dataclass(frozen=True)
class Machine:
    name: str
    arch: int  # the SASS architecture it runs (90, 80)
    sms: int
    clock_hz: float
    # per SM per clock
    issue: float  # warp-instructions issued (4 schedulers)
    fma: float  # FFMA/FADD/FMUL/HFMA2/HADD2 and IMAD together (the FMA pipe)
    imad: float  # IMAD alone (only the heavy half of the FMA pipe runs it on sm_90)
    alu: float  # integer ALU, compares, selects, moves
    xu: float  # conversions, MUFU
    shfl: float
    lsu_wavefronts: float  # L1/shared-memory wavefronts (128 B each)
    smem_bytes: float
    # device-wide
    dram_bytes_s: float
    l2_bytes_s: float
    tensor_flops_s: Dict[str, float]  # keyed "wgmma.f16", "wgmma.tf32", "mma.f16", "mma.tf32"
    # residency limits per SM
    regs: int = 65536
    max_warps: int = 64
    max_ctas: int = 32
    smem_per_sm: int = 228 * 1024
    smem_reserved_per_cta: int = 1024
    sources: Tuple[str, ...] = ("PG", "WP", "PERF", "EST")


_HOPPER_TENSOR = {"wgmma.f16": 700e12, "wgmma.tf32": 350e12, "mma.f16": 490e12, "mma.tf32": 245e12}

H100 = Machine("H100 SXM", 90, 132, 1.755e9, issue=4, fma=4, imad=2, alu=2, xu=0.5, shfl=1, lsu_wavefronts=1,
               smem_bytes=128, dram_bytes_s=3.0e12, l2_bytes_s=7.0e12, tensor_flops_s=_HOPPER_TENSOR)
H200 = Machine("H200 SXM", 90, 132, 1.755e9, issue=4, fma=4, imad=2, alu=2, xu=0.5, shfl=1, lsu_wavefronts=1,
               smem_bytes=128, dram_bytes_s=4.3e12, l2_bytes_s=7.0e12, tensor_flops_s=_HOPPER_TENSOR)
A100 = Machine("A100 SXM 80GB", 80, 108, 1.41e9, issue=4, fma=2, imad=2, alu=2, xu=0.5, shfl=1, lsu_wavefronts=1,
               smem_bytes=128, dram_bytes_s=1.83e12, l2_bytes_s=4.0e12,
               tensor_flops_s={"mma.f16": 220e12, "mma.tf32": 110e12}, smem_per_sm=164 * 1024,
               sources=("PG", "WP", "A100-EST"))

# The machines each architecture's report predicts for: the first is the primary one (the row's predicted_us).
MACHINES_FOR_ARCH: Dict[int, Tuple[Machine, ...]] = {90: (H100, H200), 80: (A100,)}
