"""Lower-bound times of one compiled launch per resource on one machine, with occupancy and the wave tail.

Per-SM resources (issue, pipes, LSU, shared memory, tensor) are charged per CTA and spread over the SMs: a grid of
C CTAs at R resident CTAs per SM runs in ceil(C / (SMs x R)) waves, so the time is the balanced time times
ceil(waves) / waves; a grid smaller than one wave is bounded by the time of one SM holding ceil(C / SMs) CTAs.
Device-wide resources (DRAM, L2) are charged for the bytes of the whole launch. The bound of a launch is the max
over resources: it assumes perfect overlap and full issue efficiency, so it is a lower bound (see
docs/static-cost-model.md for what it leaves out).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict

import torch

from .compile import CompiledLaunch
from .counts import Counts
from .machines import Machine

RESOURCES = ("issue", "fma", "alu", "xu", "shfl", "lsu", "smem", "tensor", "l2", "dram")


@dataclass(frozen=True)
class Occupancy:
    ctas_per_sm: int
    limiter: str  # "regs", "smem", "warps", "ctas"
    warps_per_sm: int
    waves: float
    tail: float  # ceil(waves) / waves (>= 1), or SMs x R / C for a grid under one wave


def occupancy(k: CompiledLaunch, m: Machine) -> Occupancy:
    regs_per_warp = math.ceil(max(k.regs, 1) * 32 / 256) * 256  # allocation unit: 256 registers per warp
    limits = {
        "regs": (m.regs // regs_per_warp) // k.num_warps,
        "smem": m.smem_per_sm // (k.shared + m.smem_reserved_per_cta),
        "warps": m.max_warps // k.num_warps,
        "ctas": m.max_ctas,
    }
    limiter = min(limits, key=limits.get)
    r = limits[limiter]
    if r < 1:
        raise ValueError(f"{k.name}: no CTA fits an SM of the {m.name} ({limits})")
    resident = min(r, math.ceil(k.ctas / m.sms))  # a small grid spreads over SMs before stacking
    waves = k.ctas / (m.sms * resident)
    return Occupancy(r, limiter, r * k.num_warps, waves, math.ceil(waves) / waves)


def dram_bytes(launch) -> int:
    """Compulsory DRAM bytes: every distinct tensor argument read or written once in full (a dummy pointer passed
    for an absent operand is the same tensor object and counts once). Exact for the forward and dx launches; for
    the split weight-gradient launches it charges each launch the whole x and every partial buffer, although each
    touches only part of them (an overestimate of at most those tensors' size)."""
    seen = {}
    for a in launch.args:
        if isinstance(a, torch.Tensor):
            seen[id(a)] = a.numel() * a.element_size()
    return sum(seen.values())


def resource_times(k: CompiledLaunch, c: Counts, m: Machine) -> Dict[str, float]:
    """Seconds per resource."""
    occ = occupancy(k, m)
    warps = k.num_warps * k.ctas  # warps of the whole grid

    def per_sm(units_per_warp: float, rate_per_clock: float) -> float:
        return units_per_warp * warps / (rate_per_clock * m.sms * m.clock_hz) * occ.tail

    cls = c.by_class
    fma_all = cls.get("fp32", 0) + cls.get("fp16", 0) + cls.get("upcast", 0) + c.imad
    alu = sum(cls.get(x, 0) for x in ("int_alu", "pred", "move"))
    xu = cls.get("conv", 0) + cls.get("mufu", 0)
    t = {
        "issue": per_sm(c.issued, m.issue),
        "fma": max(per_sm(fma_all, m.fma), per_sm(c.imad, m.imad)),
        "alu": per_sm(alu, m.alu),
        "xu": per_sm(xu, m.xu),
        "shfl": per_sm(cls.get("shfl", 0), m.shfl),
        "lsu": per_sm(c.lsu_wavefronts, m.lsu_wavefronts),
        "smem": per_sm(c.smem_bytes, m.smem_bytes),
        "tensor": 0.0,
    }
    for key, flops in c.tensor_flops.items():
        rate = m.tensor_flops_s.get(key)
        if rate is None:
            raise ValueError(f"{k.name}: the {m.name} table has no tensor rate for {key}")
        t["tensor"] += per_sm(flops, rate / (m.sms * m.clock_hz))
    dram = dram_bytes(k.launch)
    t["dram"] = dram / m.dram_bytes_s
    t["l2"] = max(dram, c.l2_bytes * warps) / m.l2_bytes_s
    return t

