"""The python API for kernel authors: predict the lower-bound time of launches without a GPU.

    from bsconv_fused.bench.static import predict_launches
    y, launches = forward_launches(x_meta, pw_meta, dw_meta, b_meta, None, (1, 1), (1, 1), (1, 1))
    for p in predict_launches(launches, "sm_90"):
        print(p.summary())

Each launch is compiled with the JIT's specialization (Triton's cache makes repeats fast), its SASS loops are
matched to Launch.loops, and the dynamic counts are turned into per-resource times on every machine of the arch.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Sequence

from .bounds import RESOURCES, Occupancy, occupancy, resource_times
from .compile import CompiledLaunch, arch_number, compile_for_model
from .counts import Counts, MatchedLoop, count_launch
from .machines import MACHINES_FOR_ARCH, Machine


@dataclass
class KernelPrediction:
    kernel: CompiledLaunch
    loops: List[MatchedLoop]
    counts: Counts  # per warp
    occupancy: Dict[str, Occupancy]  # per machine name
    times_us: Dict[str, Dict[str, float]]  # machine name -> resource -> microseconds

    def bound_us(self, machine: str) -> float:
        return max(self.times_us[machine].values())

    def binding(self, machine: str) -> str:
        t = self.times_us[machine]
        return max(t, key=t.get)

    def summary(self) -> str:
        k = self.kernel
        first = next(iter(self.times_us))
        occ = self.occupancy[first]
        loops = ", ".join(f"{lp.name}x{lp.trips:g}" for lp in self.loops) or "none"
        bounds = " | ".join(f"{m}: {self.bound_us(m):.1f} us ({self.binding(m)})" for m in self.times_us)
        return (f"{k.name}: grid {k.ctas} CTAs x {k.num_warps} warps, {k.regs} regs, stack {k.stack} B, "
                f"smem {k.shared / 1024:.1f} KB, {occ.ctas_per_sm} CTA/SM ({occ.limiter}), {occ.waves:.2f} waves; "
                f"loops {loops}; {self.counts.issued:.0f} warp-instr/warp; {bounds}")

    def as_dict(self) -> dict:
        k = self.kernel
        return dict(
            kernel=k.name, grid=list(k.grid), ctas=k.ctas, num_warps=k.num_warps, regs=k.regs, stack_bytes=k.stack,
            shared_bytes=k.shared,
            occupancy={m: dict(ctas_per_sm=o.ctas_per_sm, limiter=o.limiter, warps_per_sm=o.warps_per_sm,
                               waves=round(o.waves, 3), tail=round(o.tail, 3)) for m, o in self.occupancy.items()},
            loops=[dict(name=lp.name, trips=lp.trips, sass=str(lp.sass), depth=lp.depth,
                        static_instructions=lp.static_instructions) for lp in self.loops],
            counts_per_warp=self.counts.as_dict(),
            times_us={m: {r: round(v, 3) for r, v in t.items()} for m, t in self.times_us.items()},
            bound_us={m: round(self.bound_us(m), 3) for m in self.times_us},
            binding={m: self.binding(m) for m in self.times_us},
        )


def predict_compiled(k: CompiledLaunch, machines: Sequence[Machine]) -> KernelPrediction:
    loops, counts = count_launch(k.name, k.sass, k.launch.loops)
    times = {}
    occ = {}
    for m in machines:
        t = resource_times(k, counts, m)
        times[m.name] = {r: t[r] * 1e6 for r in RESOURCES}
        occ[m.name] = occupancy(k, m)
    return KernelPrediction(k, loops, counts, occ, times)


def predict_launches(launches, arch="sm_90") -> List[KernelPrediction]:
    """Compile and predict each Launch for arch ("sm_90": H100 and H200, "sm_80": A100)."""
    n = arch_number(arch)
    machines = MACHINES_FOR_ARCH[n]
    return [predict_compiled(compile_for_model(launch, n), machines) for launch in launches]
