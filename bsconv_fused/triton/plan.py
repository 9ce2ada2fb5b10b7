"""Tile planning for the Triton kernels: pure Python, no Triton import, testable anywhere.

Forward tiles are planned in output coordinates with a halo in input coordinates: a program computes the pointwise
conv on a (halo_h x halo_w) input region once and every depthwise tap reads that on-chip intermediate. Both halo
extents are powers of two (they are tensor axes); the plan minimises the work of the whole grid (pointwise lanes
weighted by the GEMM depth, depthwise lanes by the tap count), so small maps get small halos instead of a
mostly-padding 16x16 region.

Backward tiles are planned in input coordinates (where dt and dx live) with no halo at all: the depthwise transpose
reads grad_y at shifted addresses straight from memory.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

from .._shapes import Geometry

# Register budget of one program: lanes x channels of fp32 live values in the largest tile (the intermediate).
MAX_TILE_VALUES = 8192
TILE_OVERHEAD = 256
MAX_HALO_LANES = 256  # beyond this the intermediate tile no longer fits the register budget
BWD_LANES = 128
# the forward kernels a plan can pick; BSCONV_FUSED_TRITON_FWD pins one (tests run every variant)
FORWARD_VARIANTS = ("separable", "flat")


def next_pow2(v: int) -> int:
    return 1 << max(0, (int(v) - 1).bit_length())


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


@dataclass(frozen=True)
class ForwardPlan:
    flat: bool  # True: bsconv_fwd_flat_kernel (any halo, one flat gather); False: bsconv_fwd_kernel (separable)
    th: int  # valid output tile rows
    tw: int
    halo_h: int  # input rows the tile reads: (th-1)*sh + (kh-1)*dh + 1 (flat), a power of two >= that (separable)
    halo_w: int
    halo_lanes: int  # flat: next_pow2(halo_h * halo_w) (>= 16); separable: halo_h * halo_w
    out_h: int  # separable: next_pow2(th) (a tensor axis); flat: 0
    out_w: int
    out_lanes: int
    tiles_h: int
    tiles_w: int
    block_co: int
    block_ci: int
    num_warps: int

    @property
    def tiles_per_image(self) -> int:
        return self.tiles_h * self.tiles_w


@dataclass(frozen=True)
class BackwardPlan:
    qh: int  # input-resolution tile rows
    qw: int
    lanes: int  # next_pow2(qh * qw)
    tiles_h: int  # over the input (dx kernel)
    tiles_w: int
    utiles_h: int  # over max(input, output) extent (weight kernel: d_bias reads every output pixel)
    utiles_w: int
    block_co: int
    block_ci: int  # dx kernel: C_in block of the dx tile
    block_ci_w: int  # weight kernel: C_in block of d_pw (the C_in blocks each regenerate dt from dy)
    block_k: int  # weight kernel: C_in chunk of the recomputed intermediate
    num_warps: int


def _dot_block(c: int, cap: int) -> int:
    # tl.dot needs every dimension >= 16 on GPUs
    return max(16, min(cap, next_pow2(c)))


def _halo(tile_out: int, k: int, s: int, d: int) -> int:
    return (tile_out - 1) * s + (k - 1) * d + 1


def unsupported_reason(g: Geometry):
    """Why the Triton kernels cannot run geometry g, or None. (Only a huge dilated kernel is out of reach.)"""
    span_h = (g.kh - 1) * g.dilation[0] + 1
    span_w = (g.kw - 1) * g.dilation[1] + 1
    if next_pow2(span_h) * next_pow2(span_w) > MAX_HALO_LANES:
        return (f"the dilated kernel spans {span_h}x{span_w} pixels, more than the largest on-chip tile of the Triton "
                f"forward ({MAX_HALO_LANES} pixels)")
    return None


def _valid_out(halo: int, k: int, s: int, d: int, out_len: int) -> int:
    return min(out_len, (halo - 1 - (k - 1) * d) // s + 1) if halo > (k - 1) * d else 0


def _candidates(g: Geometry):
    """(score, halo_lanes, flat, th, tw, hh, hw) for every tile shape of both forward variants.

    The score estimates the instructions of the whole grid per output channel: a pointwise halo lane costs about
    C_in/4 (its share of the x loads; the GEMM runs on tensor cores), an output lane per tap costs a shuffle and an
    FMA in the separable variant and halo/32 shuffles and selects plus an FMA in the flat one, a tile a fixed
    overhead. These weights come from reading the sm_90 PTX, not from GPU timings: tune them on a GPU."""
    sh, sw = g.stride
    dh, dw = g.dilation
    taps = g.kh * g.kw
    pw_cost = max(g.C_in, 16) / 4
    pows = [1 << i for i in range(0, 9)]
    for hh in pows:  # separable: power-of-two extents
        th = _valid_out(hh, g.kh, sh, dh, g.Ho)
        for hw in pows:
            tw = _valid_out(hw, g.kw, sw, dw, g.Wo)
            lanes = hh * hw
            if th < 1 or tw < 1 or lanes < 16 or lanes > MAX_HALO_LANES:
                continue
            out_lanes = next_pow2(th) * next_pow2(tw)
            tiles = cdiv(g.Ho, th) * cdiv(g.Wo, tw)
            yield (tiles * (lanes * pw_cost + out_lanes * 2 * taps + TILE_OVERHEAD), lanes, False, th, tw, hh, hw)
    for tw in range(1, g.Wo + 1):  # flat: any extents
        hw = (tw - 1) * sw + (g.kw - 1) * dw + 1
        if hw > MAX_HALO_LANES:
            break
        for th in range(1, g.Ho + 1):
            hh = (th - 1) * sh + (g.kh - 1) * dh + 1
            lanes = max(16, next_pow2(hh * hw))
            if lanes > MAX_HALO_LANES:
                break
            out_lanes = next_pow2(th * tw)
            tiles = cdiv(g.Ho, th) * cdiv(g.Wo, tw)
            per_tap = 2 * lanes / 32 + 1
            yield (tiles * (lanes * pw_cost + out_lanes * per_tap * taps + TILE_OVERHEAD), lanes, True, th, tw, hh, hw)


@functools.lru_cache(maxsize=1024)
def plan_forward(g: Geometry, variant: str = "") -> ForwardPlan:
    """The cheapest forward tile (by the estimate of _candidates) for geometry g.

    variant: "" (cheapest of both), "flat" or "separable" (tests and tuning pin one)."""
    if variant not in ("", "flat", "separable"):
        raise ValueError(f"variant must be '', 'flat' or 'separable', got {variant!r}")
    cands = (c for c in _candidates(g) if not variant or c[2] == (variant == "flat"))
    best = min(cands, key=lambda c: c[:2], default=None)
    if best is None:
        raise ValueError(unsupported_reason(g) or f"no forward tile fits geometry {g}")
    _, lanes, flat, th, tw, hh, hw = best
    out_h, out_w = (0, 0) if flat else (next_pow2(th), next_pow2(tw))
    out_lanes = next_pow2(th * tw) if flat else out_h * out_w
    block_co = _dot_block(g.C_out, 64)
    while block_co > 16 and max(lanes, out_lanes) * block_co > MAX_TILE_VALUES:
        block_co //= 2
    return ForwardPlan(
        flat=flat, th=th, tw=tw, halo_h=hh, halo_w=hw, halo_lanes=lanes, out_h=out_h, out_w=out_w,
        out_lanes=out_lanes, tiles_h=cdiv(g.Ho, th), tiles_w=cdiv(g.Wo, tw), block_co=block_co,
        block_ci=_dot_block(g.C_in, 32), num_warps=8 if lanes * block_co >= 4096 else 4,
    )


@functools.lru_cache(maxsize=1024)
def plan_backward(g: Geometry) -> BackwardPlan:
    # Rows of the tile span the widest extent the weight kernel walks (input or output), split evenly when wider
    # than 32 so the last column tile is not mostly empty.
    ext_w = max(g.W, g.Wo)
    qw = ext_w if ext_w <= 32 else cdiv(ext_w, cdiv(ext_w, 32))
    # no taller than the image (a 7x7 map fills 64 lanes, not 49 of 128), at least 16 lanes (tl.dot)
    qh = max(1, min(BWD_LANES // qw, max(g.H, g.Ho)))
    return BackwardPlan(
        qh=qh, qw=qw, lanes=max(16, next_pow2(qh * qw)),
        tiles_h=cdiv(g.H, qh), tiles_w=cdiv(g.W, qw),
        utiles_h=cdiv(max(g.H, g.Ho), qh), utiles_w=cdiv(ext_w, qw),
        # wide C_in blocks: every C_in block regenerates dt from K*K shifted loads of dy
        block_co=_dot_block(g.C_out, 32), block_ci=_dot_block(g.C_in, 128), block_ci_w=_dot_block(g.C_in, 64),
        block_k=_dot_block(g.C_in, 32),
        num_warps=8,
    )


def weight_grad_groups(g: Geometry, plan: BackwardPlan, co_blocks: int, ci_blocks: int, sm_count: int = 132) -> int:
    """How many split-reduction groups the weight-gradient kernel uses.

    Enough programs to fill the GPU a few times over, never more groups than tiles, and a partial-sum buffer of at
    most 64 MiB (the partials are reduced in a fixed order afterwards: deterministic, no atomics)."""
    tiles = g.N * plan.utiles_h * plan.utiles_w
    want = cdiv(4 * sm_count, co_blocks * ci_blocks)
    cap = max(1, (64 << 20) // (4 * g.C_out * max(g.C_in, g.kh * g.kw + 2)))
    return max(1, min(tiles, want, cap))


def taps_pow2(g: Geometry) -> int:
    return next_pow2(g.kh * g.kw)
