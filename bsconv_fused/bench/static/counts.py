"""Dynamic instruction counts of one compiled launch: each SASS instruction times the trip counts of the loops that
contain it, with the trips taken from the launch's declared loops (Launch.loops, filled from the tile plan).

The declared loops are matched to the SASS loops one to one, in the order their bodies start (outer before
inner); nesting comes from address containment in the SASS. A different number of loops is an error naming the
kernel and both lists: the counts would otherwise multiply the wrong code by the wrong trips, silently. The one
tolerance: a loop the launcher declares optional (Loop.optional: a loop over a compile-time trip count, which LLVM
may unroll) may be absent. That weakens the check by as many loops as are optional: a wrong required loop can
take the place of a dropped optional one. Pairings that disagree on trips are an error, never a guess.
"""
from __future__ import annotations

import collections
import itertools
from dataclasses import dataclass, field
from typing import Dict, List, Sequence, Tuple

from .sass import (MEMORY_CLASSES, Instruction, SassLoop, bytes_per_thread, find_loops, hgmma_smem_bytes_per_warp,
                   klass, mma_flops_per_warp, parse)


class LoopMismatch(ValueError):
    """The compiled kernel's loop structure differs from the loops its Launch declares."""


@dataclass(frozen=True)
class MatchedLoop:
    name: str
    trips: float
    sass: SassLoop
    depth: int  # 0 = outermost
    static_instructions: int  # instructions inside it (nested loops included)


@dataclass
class Counts:
    """Dynamic counts per warp of one CTA (every warp of a CTA runs the same instruction stream: no warp
    specialisation in these kernels; masks are predicates, so predicated-off instructions still issue)."""

    by_class: Dict[str, float] = field(default_factory=dict)  # warp-instructions per class
    issued: float = 0.0  # every instruction, NOPs excluded
    imad: float = 0.0
    lsu_wavefronts: float = 0.0  # memory instructions that execute, max(1, bytes/128) each
    smem_bytes: float = 0.0  # LDS/STS/LDSM/STSM/LDGSTS bytes and wgmma smem operands
    ldg_bytes: float = 0.0  # global loads through L1 (all lanes assumed active)
    l2_bytes: float = 0.0  # L1-bypassing loads (cp.async .BYPASS, TMA) and stores: they reach L2 every time
    tensor_flops: Dict[str, float] = field(default_factory=dict)  # "wgmma.f16", "mma.tf32", ...

    def as_dict(self) -> dict:
        return dict(by_class={k: round(v, 1) for k, v in sorted(self.by_class.items())}, issued=round(self.issued, 1),
                    imad=round(self.imad, 1), lsu_wavefronts=round(self.lsu_wavefronts, 1),
                    smem_bytes=round(self.smem_bytes), ldg_bytes=round(self.ldg_bytes), l2_bytes=round(self.l2_bytes),
                    tensor_flops={k: round(v) for k, v in sorted(self.tensor_flops.items())})


def _pairings(declared: Sequence, found: List[SassLoop]) -> List[list]:
    """The ways to pair declared loops with the found ones, in order. A loop declared optional may be missing (the
    compiler removed it, having proved it runs once, or unrolled it: either way its body is already in the SASS as
    many times as it runs)."""
    extra = len(declared) - len(found)
    if extra == 0:
        return [list(declared)]
    optional = [i for i, lp in enumerate(declared) if getattr(lp, "optional", False)]
    if extra < 0 or extra > len(optional):
        return []
    # inner loops first (reversed): when several pairings give the same trips, the names follow the likelier one
    return [[lp for i, lp in enumerate(declared) if i not in drop]
            for drop in map(set, itertools.combinations(optional[::-1], extra))]


def match_loops(kernel: str, declared: Sequence, ins: List[Instruction]) -> List[MatchedLoop]:
    found = find_loops(ins)
    for lp in declared:
        if lp.trips < 0:
            raise LoopMismatch(f"{kernel}: loop {lp.name!r} declares negative trips {lp.trips}")
    pairings = _pairings(declared, found)
    # pairings that give the same trips in the same places give the same counts
    trip_lists = {tuple(lp.trips for lp in p) for p in pairings}
    if len(trip_lists) != 1:
        names = [f"{lp.name}({lp.trips:g})" for lp in declared]
        sizes = [f"{lp} {sum(1 for i in ins if lp.contains(i.addr))} instr" for lp in found]
        why = "cannot tell which optional loops the compiler removed" if pairings else ""
        raise LoopMismatch(
            f"{kernel}: the launch declares {len(declared)} runtime loops {names} but the compiled SASS has "
            f"{len(found)} {sizes}{' (' + why + ')' if why else ''}. Fix Launch.loops in "
            f"bsconv_fused/triton/launch.py to the loops the compiler keeps for this plan (a small constant-trip "
            f"loop may be fully unrolled; a static_range loop never is a runtime loop).")
    out = []
    for lp, s in zip(pairings[0], found):
        depth = sum(1 for o in found if o is not s and o.start <= s.start and s.end <= o.end)
        out.append(MatchedLoop(lp.name, float(lp.trips), s, depth, sum(1 for i in ins if s.contains(i.addr))))
    return out


def _tensor_key(i: Instruction) -> str:
    kind = "wgmma" if i.op == "HGMMA" else "mma"
    return f"{kind}.{'tf32' if 'TF32' in i.mods else 'f16'}"


def dynamic_counts(ins: List[Instruction], loops: List[MatchedLoop]) -> Counts:
    c = Counts()
    by_class: Dict[str, float] = collections.Counter()
    flops: Dict[str, float] = collections.Counter()
    for i in ins:
        if i.op == "NOP":
            continue
        m = 1.0
        for lp in loops:
            if lp.sass.contains(i.addr):
                m *= lp.trips
        k = klass(i)
        by_class[k] += m
        c.issued += m
        if k == "int_fma":
            c.imad += m
        if k in MEMORY_CLASSES and not i.never_runs:
            nbytes = 32 * bytes_per_thread(i)
            c.lsu_wavefronts += m * max(1.0, nbytes / 128)
            if k in ("lds", "sts", "ldgsts"):
                c.smem_bytes += m * nbytes
            if k == "ldg":
                c.ldg_bytes += m * nbytes
            if (k == "ldgsts" and ".BYPASS" in i.mods) or k in ("stg", "atom"):
                c.l2_bytes += m * nbytes
        if k == "tensor":
            flops[_tensor_key(i)] += m * mma_flops_per_warp(i)
            c.smem_bytes += m * hgmma_smem_bytes_per_warp(i)
    c.by_class = dict(by_class)
    c.tensor_flops = dict(flops)
    return c


def count_launch(kernel: str, sass_text: str, declared: Sequence) -> Tuple[List[MatchedLoop], Counts]:
    ins = parse(sass_text)
    loops = match_loops(kernel, declared, ins)
    return loops, dynamic_counts(ins, loops)
