"""Tile planning for the Triton kernels: pure Python, no Triton import, testable anywhere.

Forward tiles are planned in output coordinates with a halo in input coordinates: a program computes the pointwise
conv on a (halo_h x halo_w) input region once (flattened to a power-of-two lane count, so the region itself need
not be a power of two) and every depthwise tap reads that on-chip intermediate. The plan minimises the total lanes
the grid computes (pointwise lanes weighted by the GEMM depth, depthwise lanes by the tap count): small maps get
small halos instead of a mostly-padding 16x16 region.

Backward tiles are planned in input coordinates (where dt and dx live) with no halo at all: the depthwise transpose
reads grad_y at shifted addresses straight from memory.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

from .._shapes import Geometry

# Register budget of one program: lanes x channels of fp32 live values in the largest tile (the intermediate).
MAX_TILE_VALUES = 8192
HALO_LANE_CHOICES = (64, 128, 256, 512)
BWD_LANES = 128


def next_pow2(v: int) -> int:
    return 1 << max(0, (int(v) - 1).bit_length())


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


@dataclass(frozen=True)
class ForwardPlan:
    th: int  # output tile rows
    tw: int  # output tile cols
    halo_h: int  # input rows the tile needs: (th-1)*sh + (kh-1)*dh + 1
    halo_w: int
    halo_lanes: int  # next_pow2(halo_h * halo_w)
    out_lanes: int  # next_pow2(th * tw)
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
    block_ci: int
    num_warps: int


def _dot_block(c: int, cap: int) -> int:
    # tl.dot needs every dimension >= 16 on GPUs
    return max(16, min(cap, next_pow2(c)))


def _halo(tile_out: int, k: int, s: int, d: int) -> int:
    return (tile_out - 1) * s + (k - 1) * d + 1


@functools.lru_cache(maxsize=1024)
def plan_forward(g: Geometry) -> ForwardPlan:
    sh, sw = g.stride
    dh, dw = g.dilation
    block_ci = _dot_block(g.C_in, 32)
    best = None
    for lanes in HALO_LANE_CHOICES:
        for tw in range(1, g.Wo + 1):
            hw = _halo(tw, g.kw, sw, dw)
            if hw > lanes:
                break
            th = min(g.Ho, ((lanes // hw) - 1 - (g.kh - 1) * dh) // sh + 1)
            if th < 1:
                continue
            hh = _halo(th, g.kh, sh, dh)
            halo_lanes = max(16, next_pow2(hh * hw))  # tl.dot needs M >= 16 on GPUs
            out_lanes = next_pow2(th * tw)
            tiles = cdiv(g.Ho, th) * cdiv(g.Wo, tw)
            # lanes computed over the whole grid, pointwise lanes weighted by GEMM depth (tensor cores: /8),
            # depthwise lanes by taps; the smaller halo wins ties (fewer live registers)
            score = tiles * (halo_lanes * max(g.C_in, 16) / 8 + out_lanes * g.kh * g.kw)
            key = (score, halo_lanes)
            if best is None or key < best[0]:
                best = (key, th, tw, hh, hw, halo_lanes, out_lanes)
    if best is None:  # a kernel span wider than the largest halo: fall back to one output pixel per tile
        th = tw = 1
        hh, hw = _halo(1, g.kh, sh, dh), _halo(1, g.kw, sw, dw)
        best = (None, th, tw, hh, hw, max(16, next_pow2(hh * hw)), 1)
    _, th, tw, hh, hw, halo_lanes, out_lanes = best
    lanes = max(halo_lanes, out_lanes)
    block_co = _dot_block(g.C_out, 64)
    while block_co > 16 and lanes * block_co > MAX_TILE_VALUES:
        block_co //= 2
    return ForwardPlan(
        th=th, tw=tw, halo_h=hh, halo_w=hw, halo_lanes=halo_lanes, out_lanes=out_lanes,
        tiles_h=cdiv(g.Ho, th), tiles_w=cdiv(g.Wo, tw), block_co=block_co, block_ci=block_ci,
        num_warps=8 if lanes * block_co >= 4096 else 4,
    )


@functools.lru_cache(maxsize=1024)
def plan_backward(g: Geometry) -> BackwardPlan:
    # Rows of the tile span the widest extent the weight kernel walks (input or output), split evenly when wider
    # than 32 so the last column tile is not mostly empty.
    ext_w = max(g.W, g.Wo)
    qw = ext_w if ext_w <= 32 else cdiv(ext_w, cdiv(ext_w, 32))
    qh = max(1, BWD_LANES // qw)
    return BackwardPlan(
        qh=qh, qw=qw, lanes=next_pow2(qh * qw),
        tiles_h=cdiv(g.H, qh), tiles_w=cdiv(g.W, qw),
        utiles_h=cdiv(max(g.H, g.Ho), qh), utiles_w=cdiv(ext_w, qw),
        block_co=_dot_block(g.C_out, 32), block_ci=_dot_block(g.C_in, 32),
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


def log2(v: int) -> int:
    return int(math.log2(v))
