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
from dataclasses import dataclass, replace
from typing import Optional, Tuple

from .._shapes import Geometry

# Register budget of one program: lanes x channels of fp32 live values in the largest tile (the intermediate).
MAX_TILE_VALUES = 8192
TILE_OVERHEAD = 256
MAX_HALO_LANES = 256  # beyond this the intermediate tile no longer fits the register budget
BWD_LANES = 128
# the forward kernels a plan can pick; BSCONV_FUSED_TRITON_FWD pins one (tests run every variant)
FORWARD_VARIANTS = ("staged", "rows", "separable", "flat")


def next_pow2(v: int) -> int:
    return 1 << max(0, (int(v) - 1).bit_length())


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


@dataclass(frozen=True)
class ForwardPlan:
    variant: str  # "staged" (bsconv_fwd_staged_kernel), "flat" (bsconv_fwd_flat_kernel), "separable" (bsconv_fwd_kernel)
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
    programs_per_sm: int = 0  # staged: resident programs per SM of the persistent grid
    unroll_kw: bool = False  # staged: the tap loop walks kernel rows with the columns unrolled (else one tap a step)
    num_stages: int = 3  # software pipelining depth of the GEMM loop
    # rows (bsconv_fwd_rows_kernel): a tile is `imgs` whole images (rows == Ho) or a band of `rows` full-width
    # output rows of one image; the GEMM covers gemm_rows input rows per image (in-image rows only for whole
    # images) starting at slot row row0, in m_lanes lanes; the slot is imgs x slot_h x slot_w pixels
    imgs: int = 0
    rows: int = 0
    gemm_rows: int = 0
    row0: int = 0
    slot_h: int = 0
    slot_w: int = 0
    out_chunk: int = 0

    @property
    def flat(self) -> bool:
        return self.variant == "flat"

    @property
    def tiles_per_image(self) -> int:
        return self.tiles_h * self.tiles_w


@dataclass(frozen=True)
class BackwardPlan:
    # dx kernel: input-resolution tile (no halo), one program per (image, tile, C_in block)
    qh: int
    qw: int
    lanes: int  # next_pow2(qh * qw)
    tiles_h: int
    tiles_w: int
    block_co: int  # C_out step of the dx kernel's loop (the K of its dt @ pw GEMM)
    block_ci: int  # dx kernel: C_in block (as wide as C_in up to 256: dt is generated once per C_in block)
    # weight kernels: tile over max(input, output) extent (d_bias reads every output pixel)
    wqh: int
    wqw: int
    wlanes: int
    utiles_h: int
    utiles_w: int
    lqh: int  # LEAD weight launch (t, d_dw, d_bias): its own tile over max(input, output)
    lqw: int
    llanes: int
    ltiles_h: int
    ltiles_w: int
    block_co_w: int  # 64 when C_out allows: d_pw = dt^T x then has M = 64 (wgmma) instead of 32 (mma.sync)
    block_ci_w: int  # C_in block of the d_pw launch (dt is generated once per block)
    block_k: int  # LEAD: C_in chunk of the recomputed intermediate t
    num_warps: int
    # fused dx + d_pw launch (bsconv_bwd_dxw_kernel): dt generated once per tile and C_in block for both GEMMs;
    # chosen by the cost model over the dx + d_pw launches (fused=False: those run, and the f* fields are unused)
    fused: bool = False
    fqh: int = 0
    fqw: int = 0
    flanes: int = 0
    ftiles_h: int = 0
    ftiles_w: int = 0
    block_co_f: int = 0  # all of C_out (a power of two >= 16): dx is complete inside a program
    block_ci_f: int = 0



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


# Cost model of the staged forward (bsconv_fwd_staged_kernel), calibrated on its sm_90 SASS (Triton 3.8, fp16,
# the suite layers of docs/triton-kernels.md): warp-instructions issued per program and tile, split by where they
# sit in the compiled loops. A static prediction, not a measurement; re-derive after changing the kernel.
# per program and tile: a fixed part per warp plus parts per t value (halo lanes x BLOCK_CO) and per output value
STAGED_TILE_PER_WARP = 208  # tile decode, barriers, pointer setup, the peeled first GEMM step
STAGED_TILE_PER_HALO_ELEM = 0.086  # t -> scratch (a layout conversion through shared memory, STG.128)
STAGED_TILE_PER_HALO_ELEM_NCHW = 0.23  # NCHW: + scalar 16-bit x loads with 64-bit addresses in the peeled step
STAGED_TILE_PER_OUT_ELEM = 0.105  # y addresses, bias, store
STAGED_CI_STEP_PER_WARP = 51  # one BLOCK_CI step of the GEMM loop: cp.async + wgmma + waits (CL)
STAGED_CI_STEP_PER_HALO_ELEM = 0.0156
STAGED_CI_STEP_PER_HALO_ELEM_NCHW = 0.10  # NCHW: the x tile goes through scalar LDG + STS
STAGED_TAP_PER_WARP = 23  # one tap: its weight vector (8 cvt per thread), the loop over kernel rows
STAGED_TAP_PER_OUT_ELEM = 0.055  # LDG.128 per 8 channels, 1 cvt + 1 FFMA per value (1.75 thread-instructions)
# shared-memory time over tensor time (wgmma operand reads + the t layout conversion, SASS count): N = BLOCK_CO 64
# reads the A operand once per 64 channels, 128 once per 128
STAGED_SMEM_OVER_TENSOR = {64: 1.35, 128: 1.10}
H100 = dict(sms=132, clock=1.755e9, issue=4, dram=3.0e12, tensor=700e12, l2=7.0e12)
# halo lanes (and output lanes) x BLOCK_CO: at most 64 fp32 values per thread at 8 warps for 16-bit inputs, 32 for
# fp32 inputs (their t tile and operands double: 64 spill in the sm_90 compile)
STAGED_MAX_TILE_VALUES = {2: 16384, 4: 8192}
STAGED_L2_CALIBRATION = 1.41
# rows kernel: output values (lanes x BLOCK_CO) per chunk of the tap loop (64 fp32 accumulators per thread at 8 warps)
ROWS_OUT_VALUES = 16384
# GEMM lanes x BLOCK_CO of the rows kernel's t accumulator, key (channels_last, bytes per element): 128 fp32 per
# thread at 8 warps for 16-bit channels_last inputs (operands through cp.async into shared memory); NCHW x tiles
# go through registers (scalar loads): NCHW tiles hold one image (several images' per-lane addresses spill: 136-392
# B of stack at 7x7), 128 x 128 fits sm_90 (236-254 registers at 14x14), sm_80 spills it (8192 there)
ROWS_MAX_TILE_VALUES = {(True, 2): 32768, (False, 2): 16384, (True, 4): 16384, (False, 4): 8192}
ROWS_SM80_MAX_TILE_VALUES = 16384
ROWS_MAX_LANES = 256
# rows kernel issue model: warp-instructions per program and tile (the sum over its warps), fit to the per-loop
# instruction counts of its sm_90 SASS (Triton 3.8, fp16, N=64: 128->256@28 and 512->512@14 channels_last,
# 256->256@28 and 1024->1024@7 NCHW). Elements: GEMM = lanes x BLOCK_CO, step = lanes x BLOCK_CI, out = chunk
# lanes x BLOCK_CO. A static prediction, not a measurement; re-fit after changing the kernel.
ROWS_TILE_PER_WARP = 208  # tile decode, barriers, the pipeline prologue
ROWS_TILE_PER_GEMM_ELEM = 0.076  # mid_bias, t -> slot (layout conversion, STG)
ROWS_CI_STEP_PER_WARP = 34  # one BLOCK_CI step (and each of the num_stages - 1 prologue steps): cp.async, wgmma
ROWS_CI_STEP_PER_ELEM = 0.053
ROWS_CI_STEP_PER_ELEM_NCHW = 0.2  # NCHW: scalar 16-bit x loads, their addresses and the shared-memory stores
ROWS_CHUNK_PER_WARP = 40
ROWS_OUT_PER_ELEM = 0.226  # per output chunk: window addresses, bias, the y store
ROWS_TAP_PER_WARP = 23
ROWS_TAP_PER_OUT_ELEM = 0.070  # LDG.128 per 8 channels, cvt, FFMA
ROWS_SMEM_OVER_TENSOR = {64: 1.35, 128: 1.10}
# This cost model reads 5-19% below the full static report (bench/static) on the channels_last K=3 suite layers
# (fp16, N=64: 69.4 vs 73.1 us at 32->64@112, 31.6 vs 39.2 us at 256->256@28); forward_loses therefore asks it to
# win by this margin, so that "auto" never picks the fused forward on a layer the full report predicts to lose.
FORWARD_MODEL_MARGIN = 1.2


@dataclass(frozen=True)
class StagedCost:
    """Predicted lower bounds (seconds, H100 SXM) of the staged forward for one plan; see predict_staged."""

    issue: float
    tensor: float
    smem: float
    dram: float
    l2: float = 0.0

    @property
    def bound(self) -> float:
        """The bound that ranks tiles. Without the L2 term: ranking by it picked tiles that the full static report
        predicts slower (its L2 charge depends on masked lanes this model does not see)."""
        return max(self.issue, self.tensor, self.smem, self.dram)

    @property
    def full(self) -> float:
        """The bound that decides whether fusion wins: with the L2 term."""
        return max(self.bound, self.l2)

    @property
    def binding(self) -> str:
        return max(("issue", self.issue), ("tensor", self.tensor), ("smem", self.smem), ("dram", self.dram),
                   ("l2", self.l2), key=lambda kv: kv[1])[0]


def _elem_size(dtype) -> int:
    return 4 if "32" in str(dtype) else 2


def predict_staged(g: Geometry, p: "ForwardPlan", channels_last: bool = True, dtype="float16",
                   machine=H100) -> StagedCost:
    """Static prediction of the staged forward: max over issue, tensor, shared-memory and DRAM time."""
    co_blocks = cdiv(g.C_out, p.block_co)
    tiles = g.N * p.tiles_per_image * co_blocks
    halo = p.halo_lanes * p.block_co
    outv = p.out_lanes * p.block_co
    n_ci = cdiv(g.C_in, p.block_ci)
    w = p.num_warps
    per_tile = (w * STAGED_TILE_PER_WARP
                + (STAGED_TILE_PER_HALO_ELEM if channels_last else STAGED_TILE_PER_HALO_ELEM_NCHW) * halo
                + STAGED_TILE_PER_OUT_ELEM * outv
                + n_ci * (w * STAGED_CI_STEP_PER_WARP + (STAGED_CI_STEP_PER_HALO_ELEM if channels_last else
                                                         STAGED_CI_STEP_PER_HALO_ELEM_NCHW) * halo)
                + g.kh * g.kw * (w * STAGED_TAP_PER_WARP + STAGED_TAP_PER_OUT_ELEM * outv))
    programs = min(tiles, p.programs_per_sm * machine["sms"])
    # persistent programs: the busiest SM holds min(programs_per_sm, ceil(programs / SMs)) programs, each running
    # ceil(tiles / programs) tiles
    per_sm_tiles = cdiv(tiles, programs) * min(p.programs_per_sm, cdiv(programs, machine["sms"]))
    issue = per_sm_tiles * per_tile / (machine["issue"] * machine["clock"])
    flops = 2.0 * tiles * p.halo_lanes * p.block_co * n_ci * p.block_ci
    tensor = flops / machine["tensor"]
    b = _elem_size(dtype)
    dram = b * (g.N * g.H * g.W * g.C_in + g.N * g.Ho * g.Wo * g.C_out + g.C_in * g.C_out
                + g.C_out * (g.kh * g.kw + 1)) / machine["dram"]
    smem = STAGED_SMEM_OVER_TENSOR.get(p.block_co, 1.35 * 64 / p.block_co if p.block_co < 64 else 1.1) * tensor
    # L2 traffic that no L1 absorbs, as the static report (bsconv_fused/bench/static) charges it: the x halo of
    # every tile and channel block through cp.async .BYPASS (channels_last; NCHW x loads go through L1), the stores
    # of t and of the tap weights into the program's slot, and y
    t_size = 4 if b == 4 else b
    l2_bytes = tiles * (p.halo_lanes * p.block_co * t_size + next_pow2(g.kh * g.kw) * p.block_co * t_size)
    if channels_last:
        l2_bytes += tiles * p.halo_lanes * n_ci * p.block_ci * b
    l2_bytes += b * g.N * g.Ho * g.Wo * g.C_out
    # x STAGED_L2_CALIBRATION: the static report counts whole warp-wide accesses (masked lanes of the padded halo
    # and channel blocks included)
    l2 = max(dram, STAGED_L2_CALIBRATION * l2_bytes / machine.get("l2", 7.0e12))
    return StagedCost(issue=issue, tensor=tensor, smem=smem, dram=dram, l2=l2)


def predict_rows(g: Geometry, p: "ForwardPlan", channels_last: bool = True, dtype="float16",
                 machine=H100) -> StagedCost:
    """Static prediction of the whole-rows forward (bsconv_fwd_rows_kernel); see ROWS_* for the calibration."""
    tiles = rows_tiles(g, p)
    gemm = p.halo_lanes * p.block_co
    out_pix = p.imgs * p.rows * g.Wo
    n_chunks = cdiv(out_pix, p.out_chunk)
    outv = n_chunks * p.out_chunk * p.block_co
    n_ci = cdiv(g.C_in, p.block_ci)
    w = p.num_warps
    per_tile = (w * ROWS_TILE_PER_WARP + ROWS_TILE_PER_GEMM_ELEM * gemm
                + (n_ci + p.num_stages - 1) * (w * ROWS_CI_STEP_PER_WARP + (ROWS_CI_STEP_PER_ELEM if channels_last else
                                                       ROWS_CI_STEP_PER_ELEM_NCHW) * p.halo_lanes * p.block_ci)
                + n_chunks * w * ROWS_CHUNK_PER_WARP + ROWS_OUT_PER_ELEM * outv
                + g.kh * g.kw * (n_chunks * w * ROWS_TAP_PER_WARP + ROWS_TAP_PER_OUT_ELEM * outv))
    programs = min(tiles, p.programs_per_sm * machine["sms"])
    per_sm_tiles = cdiv(tiles, programs) * min(p.programs_per_sm, cdiv(programs, machine["sms"]))
    issue = per_sm_tiles * per_tile / (machine["issue"] * machine["clock"])
    b = _elem_size(dtype)
    # tensor time of the busiest SM (a grid of few large tiles leaves SMs idle)
    flops = 2.0 * per_sm_tiles * machine["sms"] * p.halo_lanes * p.block_co * n_ci * p.block_ci
    tensor = flops / machine["tensor"] * (2 if b == 4 else 1)
    dram = b * (g.N * g.H * g.W * g.C_in + g.N * g.Ho * g.Wo * g.C_out + g.C_in * g.C_out
                + g.C_out * (g.kh * g.kw + 1)) / machine["dram"]
    smem = ROWS_SMEM_OVER_TENSOR.get(p.block_co, 1.35 * 64 / p.block_co if p.block_co < 64 else 1.1) * tensor
    # L2 bytes the static report charges (cp.async .BYPASS loads and every store, whole warps): per tile and C_in
    # step the pw block and the x rows (channels_last; NCHW x loads go through L1), counted for the num_stages - 1
    # prologue steps of the software pipeline too (the report counts their predicated-off tail copies as full);
    # t into the slot, the tap weights, y per output chunk; the slot padding zeroed once per program
    t_size = 4 if b == 4 else b
    per = p.imgs * p.gemm_rows * g.W * p.block_co * t_size + next_pow2(g.kh * g.kw) * p.block_co * t_size
    per += (n_ci + p.num_stages - 1) * p.block_ci * ((p.halo_lanes if channels_last else 0) + p.block_co) * b
    per += b * n_chunks * p.out_chunk * p.block_co
    border = p.imgs * (p.slot_h * p.slot_w - p.gemm_rows * g.W)
    zero = programs * cdiv(border, p.halo_lanes) * p.halo_lanes * p.block_co * t_size
    l2 = max(dram, (tiles * per + zero) / machine.get("l2", 7.0e12))
    return StagedCost(issue=issue, tensor=tensor, smem=smem, dram=dram, l2=l2)


def unfused_forward_seconds(g: Geometry, dtype="float16", machine=H100) -> float:
    """Roofline of the ideal two-layer path (bsconv_fused/bench/bounds.py's formula): a pointwise kernel writing t
    and a depthwise kernel reading it, each max(bytes / bandwidth, GEMM FLOPs / tensor throughput)."""
    b = _elem_size(dtype)
    n_x = g.N * g.H * g.W * g.C_in
    n_t = g.N * g.H * g.W * g.C_out
    n_y = g.N * g.Ho * g.Wo * g.C_out
    gemm = 2.0 * n_x * g.C_out
    pw = max(b * (n_x + n_t + g.C_in * g.C_out) / machine["dram"], gemm / machine["tensor"])
    dw = b * (n_t + n_y + g.C_out * (g.kh * g.kw + 1)) / machine["dram"]
    return pw + dw


def staged_plan(g: Geometry, th: int, tw: int, block_co: int, num_warps: int = 0, unroll_kw: bool = False) -> ForwardPlan:
    """The staged kernel's plan for a given output tile (th x tw) and channel block."""
    sh, sw = g.stride
    dh, dw = g.dilation
    hh = _halo(th, g.kh, sh, dh)
    hw = _halo(tw, g.kw, sw, dw)
    lanes = max(64, next_pow2(hh * hw))
    out_lanes = max(16, next_pow2(th * tw))
    if not num_warps:
        num_warps = 8 if max(lanes, out_lanes) * block_co > 8192 else 4  # at most 64 fp32 values per thread
    return ForwardPlan(
        variant="staged", th=th, tw=tw, halo_h=hh, halo_w=hw, halo_lanes=lanes, out_h=0, out_w=0,
        out_lanes=out_lanes, tiles_h=cdiv(g.Ho, th), tiles_w=cdiv(g.Wo, tw), block_co=block_co,
        block_ci=_dot_block(g.C_in, 32), num_warps=num_warps,
        # resident programs per SM (registers): 8 warps at 150-250 registers fit once, 4 warps twice
        programs_per_sm=1 if num_warps == 8 else 2, unroll_kw=unroll_kw, num_stages=3)


def _staged_candidates(g: Geometry, channels_last: bool, elem_size: int):
    cap = STAGED_MAX_TILE_VALUES[4 if elem_size >= 4 else 2]
    for block_co in sorted({_dot_block(g.C_out, 64), _dot_block(g.C_out, 128)}):
        for th in range(1, min(g.Ho, 32) + 1):
            for tw in range(1, min(g.Wo, 64) + 1):
                p = staged_plan(g, th, tw, block_co, 0 if cap > 8192 else 8)
                if max(p.halo_lanes, p.out_lanes) * block_co > cap:
                    continue
                yield predict_staged(g, p, channels_last).bound, p.halo_lanes, p


def plan_staged(g: Geometry, channels_last: bool = True, elem_size: int = 2) -> ForwardPlan:
    """The staged tile with the lowest predicted time (ties: the smaller halo)."""
    best = min(_staged_candidates(g, channels_last, elem_size), key=lambda c: c[:2], default=None)
    if best is None:
        raise ValueError(unsupported_reason(g) or f"no forward tile fits geometry {g}")
    return best[2]


def forward_loses(g: Geometry, dtype, channels_last: bool = True) -> Optional[str]:
    """Why the fused forward is predicted slower than the ideal two-layer path for geometry g, or None.

    Both sides are static H100 predictions: the cost model of the kernel plan_forward picks (predict_forward:
    predict_staged or predict_rows, each calibrated on its SASS) against the unfused roofline
    (unfused_forward_seconds). The backend choice runs the two-layer path when this
    returns a reason."""
    if unsupported_reason(g):
        return unsupported_reason(g)
    p = plan_forward(g, "", channels_last, _elem_size(dtype))
    cost = predict_forward(g, p, channels_last, dtype)
    unfused = unfused_forward_seconds(g, dtype)
    if cost.full * FORWARD_MODEL_MARGIN > unfused:
        return (f"the fused Triton forward is predicted at {cost.full * 1e6:.1f} us ({cost.binding}-bound) against "
                f"{unfused * 1e6:.1f} us for the ideal two-layer path (static H100 model, with a "
                f"{FORWARD_MODEL_MARGIN}x margin)")
    return None


def rows_plan(g: Geometry, imgs: int, rows: int, block_co: int, block_ci: int = 0, num_stages: int = 3,
              num_warps: int = 8) -> ForwardPlan:
    """The whole-rows kernel's plan: `imgs` whole images per tile (rows == Ho) or a band of `rows` output rows of
    one image (imgs == 1)."""
    sh, sw = g.stride
    dh, dw = g.dilation
    ph, pw = g.padding
    whole = rows >= g.Ho
    rows = min(rows, g.Ho)
    if not whole and imgs != 1:
        raise ValueError(f"a band of {rows} rows (< Ho = {g.Ho}) takes one image per tile, got imgs={imgs}")
    span_h = (rows - 1) * sh + (g.kh - 1) * dh + 1  # slot rows the taps read
    # whole images: the GEMM computes the H in-image rows at slot rows ph.. (the rest stays zero); bands: every
    # input row of the band (those outside the image come out 0: masked x, no mid_bias)
    gemm_rows, row0 = (g.H, ph) if whole else (span_h, 0)
    slot_h = max(span_h, row0 + gemm_rows)
    slot_w = max((g.Wo - 1) * sw + (g.kw - 1) * dw + 1, pw + g.W)
    m_lanes = max(64, next_pow2(imgs * gemm_rows * g.W))
    out_pix = imgs * rows * g.Wo
    out_chunk = max(16, min(next_pow2(out_pix), ROWS_OUT_VALUES // block_co))
    bands = cdiv(g.Ho, rows)
    return ForwardPlan(
        variant="rows", th=rows, tw=g.Wo, halo_h=slot_h, halo_w=slot_w, halo_lanes=m_lanes, out_h=0, out_w=0,
        out_lanes=out_chunk, tiles_h=bands, tiles_w=1, block_co=block_co,
        block_ci=block_ci or _dot_block(g.C_in, 64), num_warps=num_warps, programs_per_sm=1, num_stages=num_stages,
        imgs=imgs, rows=rows, gemm_rows=gemm_rows, row0=row0, slot_h=slot_h, slot_w=slot_w, out_chunk=out_chunk)


def rows_tiles(g: Geometry, p: ForwardPlan) -> int:
    return cdiv(g.N, p.imgs) * p.tiles_h * cdiv(g.C_out, p.block_co)


def _rows_cap(channels_last: bool, elem_size: int, arch: int = 90) -> int:
    cap = ROWS_MAX_TILE_VALUES[(channels_last, 4 if elem_size >= 4 else 2)]
    # sm_80's mma.sync takes its operand fragments into registers: the 256 x 128 tile spills there (80 B at 7x7),
    # and the NCHW 128 x 128 one (248-392 B)
    return cap if arch >= 90 else min(cap, ROWS_SM80_MAX_TILE_VALUES if channels_last else 8192)


def _rows_candidates(g: Geometry, channels_last: bool, elem_size: int, arch: int = 90):
    cap = _rows_cap(channels_last, elem_size, arch)
    shapes = [(i, g.Ho) for i in range(1, g.N + 1)] + [(1, r) for r in range(1, g.Ho)]
    for block_co in sorted({_dot_block(g.C_out, 64), _dot_block(g.C_out, 128)}):
        for block_ci in sorted({_dot_block(g.C_in, 32), _dot_block(g.C_in, 64)}):
            for stages in (2, 3):
                for imgs, rows in shapes:
                    p = rows_plan(g, imgs, rows, block_co, block_ci, stages)
                    if p.halo_lanes * block_co > cap or p.halo_lanes > ROWS_MAX_LANES or (imgs > 1 and not
                                                                                            channels_last):
                        continue
                    cost = predict_rows(g, p, channels_last, "float32" if elem_size >= 4 else "float16").full
                    yield cost, p.halo_lanes, -stages, p


def plan_rows(g: Geometry, channels_last: bool = True, elem_size: int = 2, arch: int = 90) -> ForwardPlan:
    """The whole-rows tile, channel blocks and pipeline depth with the lowest predicted time (ties: fewer GEMM
    lanes, then the deeper pipeline)."""
    best = min(_rows_candidates(g, channels_last, elem_size, arch), key=lambda c: c[:3], default=None)
    if best is None:
        raise ValueError(f"no whole-rows forward tile fits geometry {g}: the input rows of one output row "
                         f"({(g.kh - 1) * g.dilation[0] + 1} x {g.W} pixels) exceed the rows kernel's GEMM tile "
                         f"({ROWS_MAX_LANES} lanes, {_rows_cap(channels_last, elem_size, arch)} values with 16 channels)")
    return best[3]


def _legacy_plan(g: Geometry, variant: str) -> ForwardPlan:
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
        variant="flat" if flat else "separable", th=th, tw=tw, halo_h=hh, halo_w=hw, halo_lanes=lanes,
        out_h=out_h, out_w=out_w, out_lanes=out_lanes, tiles_h=cdiv(g.Ho, th), tiles_w=cdiv(g.Wo, tw),
        block_co=block_co, block_ci=_dot_block(g.C_in, 32), num_warps=8 if lanes * block_co >= 4096 else 4,
    )


@functools.lru_cache(maxsize=1024)
def plan_forward(g: Geometry, variant: str = "", channels_last: bool = True, elem_size: int = 2,
                 arch: int = 90) -> ForwardPlan:
    """The forward tile plan for geometry g.

    variant: "" (the default: staged), "staged", "flat" or "separable" (the older gather kernels; tests and
    tuning pin one). channels_last: x's layout (NCHW x loads cost more in the staged kernel's GEMM). elem_size: bytes
    per element of x (fp32 tiles are capped smaller: registers). arch: the GPU's compute capability x 10 (the rows
    kernel's largest tile fits sm_90's registers only); the costs are the H100 model's either way."""
    if variant not in ("", "staged", "rows", "flat", "separable"):
        raise ValueError(f"variant must be '', 'staged', 'rows', 'flat' or 'separable', got {variant!r}")
    if variant in ("flat", "separable"):
        return _legacy_plan(g, variant)
    if variant == "rows":
        return plan_rows(g, channels_last, elem_size, arch)
    staged = plan_staged(g, channels_last, elem_size)
    if variant == "staged":
        return staged
    # the default: the variant the model predicts faster (issue 7: chosen by predicted cost, not by hand)
    dtype = "float32" if elem_size >= 4 else "float16"
    try:
        rows = plan_rows(g, channels_last, elem_size, arch)
    except ValueError:  # input rows too wide for the rows kernel's GEMM tile
        return staged
    if predict_forward(g, rows, channels_last, dtype).full < predict_forward(g, staged, channels_last, dtype).full:
        return rows
    return staged


def predict_forward(g: Geometry, p: ForwardPlan, channels_last: bool = True, dtype="float16") -> StagedCost:
    """The static prediction of the kernel plan p runs (staged or rows)."""
    if p.variant == "rows":
        return predict_rows(g, p, channels_last, dtype)
    return predict_staged(g, p, channels_last, dtype)


def _bwd_tile(ext_h: int, ext_w: int, lanes: int) -> Tuple[int, int]:
    # rows of the tile span the extent, split evenly when wider than 32 (or than the lanes: a 16-lane tile of a
    # 28-wide map is 14 wide, not 28 wide in 32 lanes, which would break the tap budget) so the last column tile is
    # not mostly empty; no taller than the image (a 7x7 map fills 64 lanes, not 49 of 128)
    row = min(32, lanes)
    qw = ext_w if ext_w <= row else cdiv(ext_w, cdiv(ext_w, row))
    qh = max(1, min(max(1, lanes // qw), ext_h))
    return qh, qw


# Register budget of the dx accumulator (lanes x C_in block, fp32): 64 registers per thread at 8 warps.
DX_ACC_VALUES = 16384
DX_MAX_CI = 256
W_DPW_MAX_CI = 256
DDW_REG_MAX_TAPS = 9  # d_dw in per-tap register accumulators up to 3x3 (LEAD launch)
BWD_WARPS = 8
TAP_VALUES_CL = 96
TAP_VALUES_NCHW = 48
TAP_VALUES_NCHW_STRIDED = 32


def _pow2_floor(v: int) -> int:
    return 1 << max(0, int(v).bit_length() - 1)


# fused dx + d_pw launch: all of C_out in one block (dx complete in the program) up to this many channels, and a
# d_pw accumulator (C_out x C_in block, fp32) of at most 64 registers per thread at 8 warps (32 for fp32 tensors)
FUSED_MAX_CO = 128
FUSED_MAX_CI = 128
FUSED_ACC_VALUES = 16384
# dt and the dx tile (lanes x (C_out + C_in block), fp32) beside that accumulator
FUSED_TILE_VALUES = 16384
# the fused launch runs one 8-warp program per SM (its d_pw accumulator): two waves of programs, not four, halve
# its fp32 d_pw partials (groups x C_out x C_in, DRAM traffic) at little wave-tail cost
FUSED_PROGRAMS_PER_SM = 2
BACKWARD_VARIANTS = ("split", "fused")  # BSCONV_FUSED_TRITON_BWD pins one (tests run both)


@functools.lru_cache(maxsize=1024)
def plan_backward(g: Geometry, channels_fast: bool = True, itemsize: int = 2, variant: str = "") -> BackwardPlan:
    """Backward tiles. The multiplicity of dt (how often it is regenerated from dy) is what the blocks minimise.
    Split: once per C_in block of up to 256 channels in the dx launch and in the d_pw launch (128 with NCHW
    grad_y). Fused (C_out <= FUSED_MAX_CO): once per C_in block of up to 128 for dx and d_pw together. The LEAD
    weight launch (t, d_dw, d_bias) needs no dt. variant: "" (the cheaper by the cost model, predict_plan),
    "split" or "fused" (tests pin one; "fused" falls back to split where it does not apply)."""
    if variant not in ("",) + BACKWARD_VARIANTS:
        raise ValueError(f"variant must be '', 'split' or 'fused', got {variant!r}")
    split = _plan_split(g, channels_fast, itemsize)
    fused = _plan_fused(g, split, channels_fast, itemsize)
    if fused is None or variant == "split":
        return split
    if variant == "fused":
        return fused
    cost = lambda p: sum(predict_plan(g, p, itemsize, channels_fast).values())  # noqa: E731
    return fused if cost(fused) < cost(split) else split


def _plan_fused(g: Geometry, split: BackwardPlan, channels_fast: bool, itemsize: int) -> Optional[BackwardPlan]:
    """The fused dx + d_pw tile, or None where C_out does not fit one block."""
    if next_pow2(g.C_out) > FUSED_MAX_CO:
        return None
    block_co = _dot_block(g.C_out, FUSED_MAX_CO)
    wide = 2 // max(1, itemsize // 2)  # fp32 operands: half the budgets
    block_ci = _dot_block(g.C_in, FUSED_MAX_CI)
    while block_ci > 16 and block_co * block_ci > FUSED_ACC_VALUES * wide // 2:
        block_ci //= 2
    budget = TAP_VALUES_CL if channels_fast else (TAP_VALUES_NCHW if g.stride == (1, 1) else TAP_VALUES_NCHW_STRIDED)
    lanes = max(16, min(BWD_LANES, _pow2_floor(budget * 32 * BWD_WARPS // (g.kw * block_co)),
                        _pow2_floor(FUSED_TILE_VALUES * wide // 2 // (block_co + block_ci))))
    fqh, fqw = _bwd_tile(g.H, g.W, lanes)
    return replace(split, fused=True, fqh=fqh, fqw=fqw, flanes=max(16, next_pow2(fqh * fqw)),
                   ftiles_h=cdiv(g.H, fqh), ftiles_w=cdiv(g.W, fqw), block_co_f=block_co, block_ci_f=block_ci)


def _plan_split(g: Geometry, channels_fast: bool, itemsize: int) -> BackwardPlan:
    block_ci = _dot_block(g.C_in, DX_MAX_CI)
    block_co = _dot_block(g.C_out, 64)
    # The kw taps of one kernel row are unrolled and the compiler issues their loads together: the values a
    # thread holds per kernel row (KW x lanes x block_co / threads) must fit beside the accumulators. Budgets
    # read off the sm_90 cubins (the suite layers spill beyond them): channels-fast grad_y loads 8 channels per
    # vector; NCHW loads every element with its own 64-bit address (strided: more index math in flight).
    budget = TAP_VALUES_CL if channels_fast else (TAP_VALUES_NCHW if g.stride == (1, 1) else TAP_VALUES_NCHW_STRIDED)
    max_lanes = max(16, min(BWD_LANES, _pow2_floor(budget * 32 * BWD_WARPS // (g.kw * block_co))))
    # fp32 operands (tf32 GEMMs) take twice the registers per dt/pw value: half the accumulator (sm_80 spills)
    lanes_dx = max(16, min(max_lanes, DX_ACC_VALUES * 2 // max(2, itemsize) // block_ci))
    qh, qw = _bwd_tile(g.H, g.W, lanes_dx)
    ext_h, ext_w = max(g.H, g.Ho), max(g.W, g.Wo)
    wqh, wqw = _bwd_tile(ext_h, ext_w, max_lanes)
    # LEAD launch (t, d_dw): with register accumulators (up to DDW_REG_MAX_TAPS taps, all unrolled) the taps'
    # loads sit beside one accumulator per tap: half the lanes (sm_90 spills at the full tile). Larger kernels
    # with NCHW grad_y (per-tap lane reductions of scalar loads) also take half: 128->128@28 5x5 had a 24-byte
    # stack frame at 32 lanes, none at 16
    ddw_reg = g.kh * g.kw <= DDW_REG_MAX_TAPS
    lqh, lqw = _bwd_tile(ext_h, ext_w, max(16, max_lanes // 2) if (ddw_reg or not channels_fast) else max_lanes)
    return BackwardPlan(
        qh=qh, qw=qw, lanes=max(16, next_pow2(qh * qw)), tiles_h=cdiv(g.H, qh), tiles_w=cdiv(g.W, qw),
        block_co=block_co, block_ci=block_ci,
        wqh=wqh, wqw=wqw, wlanes=max(16, next_pow2(wqh * wqw)), utiles_h=cdiv(ext_h, wqh), utiles_w=cdiv(ext_w, wqw),
        lqh=lqh, lqw=lqw, llanes=max(16, next_pow2(lqh * lqw)), ltiles_h=cdiv(ext_h, lqh), ltiles_w=cdiv(ext_w, lqw),
        block_co_w=block_co,
        # NCHW: the wide block's accumulator plus the scalar loads' addresses spill at 256 (sm_90)
        block_ci_w=_dot_block(g.C_in, W_DPW_MAX_CI if channels_fast else W_DPW_MAX_CI // 2),
        block_k=_dot_block(g.C_in, 32), num_warps=BWD_WARPS,
    )


def weight_grad_groups(g: Geometry, tiles: int, programs_per_group: int, cols: int, sm_count: int = 132,
                       per_sm: int = 4) -> int:
    """How many split-reduction groups one weight-gradient launch uses (each launch sizes its own: the LEAD
    launch has only C_out/64 programs per group, the d_pw launch that many per C_in block).

    Enough programs to fill the GPU a few times over, never more groups than its tiles, and a partial-sum buffer
    of at most 64 MiB for this launch's cols C_in columns (the partials are reduced in a fixed order afterwards:
    deterministic, no atomics)."""
    want = cdiv(per_sm * sm_count, programs_per_group)
    cap = max(1, (64 << 20) // (4 * g.C_out * max(cols, g.kh * g.kw + 2)))
    return max(1, min(tiles, want, cap))


def taps_pow2(g: Geometry) -> int:
    return next_pow2(g.kh * g.kw)


# ----------------------------------------------------------------------------------------------------------------
# Choosing by cost: a static model of the backward kernels against the unfused roofline.
#
# Thread-instructions per unit of work, read off the sm_90 SASS of the kernels as the launchers specialise them
# (JIT binder, fp16, N=64, the eight suite layers, both layouts; docs/triton-backward.md has the counts and the
# method). Units: "elem-tap" = one (lane, channel) element of a tile for one depthwise tap; "elem" = one (lane,
# channel) element of a tile per C_out step (dx) or per tile (weight kernels); "chunk" = one BLOCK_K=32 slice of
# C_in in the LEAD launch's recomputation of t. The model is issue-bound (4 warp-instructions per SM and clock),
# plus the DRAM and tensor rooflines per kernel: the SASS bounds of the suite are issue-bound except the deep
# channels_last layers, which are LSU-bound within 1.3x of issue (the model under-predicts those).
@dataclass(frozen=True)
class BackwardCosts:
    dt_tap: float  # dt generation: dy load (masked, shifted), convert, FMA with the tap weight
    ddw_reg_tap: float  # LEAD, up to 3x3: t * dy_k into the tap's register accumulator (all taps unrolled)
    ddw_tap: float  # LEAD, larger kernels: t * dy_k and its reduction over the tile's lanes, per tap
    t_chunk: float  # LEAD: recomputing t, per element and 32-channel chunk of C_in (x loads, wgmma issue)
    lead_tile: float  # LEAD: per element and tile outside those (t bounce through the scratch slot, d_bias)
    dx_step: float  # dx: per element and C_out step outside the taps (pw tile, dt rounding, wgmma)
    rest_tile: float  # d_pw launch: per element and tile outside the taps (dt^T, d_mid)
    dpw_col: float  # d_pw launch: per element, tile and (C_in block / C_out block) ratio (x tile, d_pw wgmma)
    fused_tile: float  # fused dx + d_pw launch: per element (lanes x C_out) and tile outside the taps
    fused_col: float  # fused: per element, tile and (C_in block / C_out) ratio (pw and x tiles, dx store, GEMMs)


BWD_COSTS = {  # key: channels_last (grad_y channels-fast)
    True: BackwardCosts(dt_tap=3.7, ddw_reg_tap=4.9, ddw_tap=10.3, t_chunk=2.4, lead_tile=15.0, dx_step=14.0,
                        rest_tile=8.0, dpw_col=2.5, fused_tile=8.0, fused_col=11.0),
    False: BackwardCosts(dt_tap=9.0, ddw_reg_tap=8.5, ddw_tap=13.2, t_chunk=6.6, lead_tile=30.0, dx_step=27.0,
                         rest_tile=8.0, dpw_col=12.0, fused_tile=16.0, fused_col=33.0),
}


@dataclass(frozen=True)
class Device:
    """The throughputs the model charges: H100 SXM by default (section 1.3 of the static findings)."""
    sm_count: int = 132
    clock_hz: float = 1.755e9
    issue_per_clk: float = 4.0  # warp-instructions per SM and clock
    dram_bps: float = 3.0e12
    tensor_flops: float = 700e12  # fp16/bf16 wgmma; tf32 runs at half


def _itemsize(dtype) -> int:
    size = getattr(dtype, "itemsize", None)
    if size is None:
        size = {"fp16": 2, "float16": 2, "bf16": 2, "bfloat16": 2, "fp32": 4, "float32": 4}.get(str(dtype))
    if size is None:
        raise ValueError(f"dtype must be a torch dtype or one of fp16, bf16, fp32, got {dtype!r}")
    return int(size)


def predict_backward(g: Geometry, dtype, channels_last: bool = False, dev: Device = Device()) -> dict:
    """Predicted seconds of each backward launch (all gradients asked for) of the plan the launcher runs: a static
    prediction from BWD_COSTS, not a measurement. Keys: "dx", "w_lead" (t, d_dw, d_bias), "w_rest" (dt, d_pw,
    d_mid) for the split plan; "dxw" (dt, dx, d_pw, d_mid) and "w_lead" for the fused one."""
    b = _itemsize(dtype)
    return predict_plan(g, plan_backward(g, bool(channels_last), b), b, channels_last, dev)


def predict_plan(g: Geometry, p: BackwardPlan, itemsize: int, channels_last: bool, dev: Device = Device()) -> dict:
    """predict_backward for a given plan (plan_backward ranks its candidates with it)."""
    c = BWD_COSTS[bool(channels_last)]
    b = itemsize
    tc = dev.tensor_flops / (2 if b == 4 else 1)
    taps = g.kh * g.kw
    n_x, n_y = g.N * g.H * g.W * g.C_in, g.N * g.Ho * g.Wo * g.C_out
    G = 2 * g.N * g.H * g.W * g.C_in * g.C_out
    warp_rate = 32 * dev.issue_per_clk * dev.sm_count * dev.clock_hz  # thread-instructions per second

    def kernel(instr, bytes_, flops):
        return max(instr / warp_rate, bytes_ / dev.dram_bps, flops / tc)

    out = {}
    if p.fused:
        # per tile and C_in block: dt (taps) once, then dx = dt pw and d_pw += dt^T x
        elems = p.flanes * p.block_co_f
        progs = g.N * p.ftiles_h * p.ftiles_w * cdiv(g.C_in, p.block_ci_f)
        per = taps * c.dt_tap + c.fused_tile + c.fused_col * p.block_ci_f / p.block_co_f
        # DRAM: x and dy read, dx written, and the fp32 d_pw partials of the groups
        groups = weight_grad_groups(g, g.N * p.ftiles_h * p.ftiles_w, cdiv(g.C_in, p.block_ci_f), g.C_in,
                                    dev.sm_count, FUSED_PROGRAMS_PER_SM)
        out["dxw"] = kernel(progs * elems * per, b * (2 * n_x + n_y) + 4 * groups * g.C_out * g.C_in, 2 * G)
    else:
        # dx: per program, C_out steps of (taps x elements x dt_tap + elements x dx_step)
        elems = p.lanes * p.block_co
        steps = cdiv(g.C_out, p.block_co)
        progs = g.N * p.tiles_h * p.tiles_w * cdiv(g.C_in, p.block_ci)
        out["dx"] = kernel(progs * steps * elems * (taps * c.dt_tap + c.dx_step), b * (n_x + n_y), G)
    # weight launches: per tile and C_out block
    ltiles = g.N * p.ltiles_h * p.ltiles_w * cdiv(g.C_out, p.block_co_w)
    ddw = c.ddw_reg_tap if taps <= DDW_REG_MAX_TAPS else c.ddw_tap
    per = taps * ddw + cdiv(g.C_in, p.block_k) * c.t_chunk + c.lead_tile
    out["w_lead"] = kernel(ltiles * p.llanes * p.block_co_w * per, b * (n_x + n_y), G)
    if not p.fused:
        tiles = g.N * p.utiles_h * p.utiles_w * cdiv(g.C_out, p.block_co_w)
        nci = cdiv(g.C_in, p.block_ci_w)
        per = taps * c.dt_tap + c.rest_tile + c.dpw_col * p.block_ci_w / p.block_co_w
        out["w_rest"] = kernel(tiles * nci * p.wlanes * p.block_co_w * per, b * (n_x + n_y), 2 * G)
    return out


def unfused_backward_roofline(g: Geometry, dtype, dev: Device = Device()) -> float:
    """Seconds of the ideal two-layer backward (bsconv_fused/bench/bounds.py's model: the depthwise backward reads
    dy twice and t once and writes dt; the pointwise backward reads dt twice and x once, writes dx; 2G tensor)."""
    b = _itemsize(dtype)
    tc = dev.tensor_flops / (2 if b == 4 else 1)
    n_x, n_t, n_y = g.N * g.H * g.W * g.C_in, g.N * g.H * g.W * g.C_out, g.N * g.Ho * g.Wo * g.C_out
    n_dw, n_pw = g.C_out * (g.kh * g.kw + 1), g.C_in * g.C_out
    G = 2 * g.N * g.H * g.W * g.C_in * g.C_out
    return (b * (2 * n_y + 2 * n_t + 2 * n_dw) / dev.dram_bps
            + max(b * (2 * n_t + 2 * n_x + 2 * n_pw) / dev.dram_bps, 2 * G / tc))


def backward_loses(g: Geometry, dtype, channels_last: bool = False, dev: Device = Device()) -> Optional[str]:
    """Why the fused Triton backward is predicted slower than the unfused roofline for g, or None.

    A static prediction (predict_backward) against the ideal unfused path (unfused_backward_roofline); both are
    lower bounds of their kind, so the comparison is like for like. channels_last: the layout of grad_y."""
    fused = sum(predict_backward(g, dtype, channels_last, dev).values())
    unfused = unfused_backward_roofline(g, dtype, dev)
    if fused > unfused:
        return (f"the fused Triton backward is predicted at {fused * 1e6:.1f} us, the unfused roofline at "
                f"{unfused * 1e6:.1f} us (static sm_90 model in bsconv_fused/triton/plan.py, "
                f"{'channels_last' if channels_last else 'NCHW'})")
    return None
