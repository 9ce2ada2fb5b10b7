"""Launchers for the Triton kernels: geometry, tile plan, grid, strides, dtype handling, split-reduction finish.

Called by the custom ops in bsconv_fused/ops.py (the only caller); they see validated, same-dtype tensors.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Tuple

import torch

from .._shapes import empty_output, pw_as_matrix, validate
from ..activation import name_of
from .backward import bsconv_bwd_dx_kernel, bsconv_bwd_dxw_kernel, bsconv_bwd_w_kernel
from .forward import bsconv_fwd_flat_kernel, bsconv_fwd_kernel, bsconv_fwd_rows_kernel, bsconv_fwd_staged_kernel
from .plan import (DDW_REG_MAX_TAPS, FUSED_PROGRAMS_PER_SM, cdiv, plan_backward, plan_forward, rows_tiles,
                   taps_pow2, weight_grad_groups)

Pair = Tuple[int, int]


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _dtype_flags(dtype: torch.dtype):
    """(UPCAST, INPUT_PRECISION) for a tensor dtype.

    fp32 follows cuDNN: TF32 tensor cores when torch.backends.cudnn.allow_tf32 (PyTorch's default for convs), else
    exact fp32. The interpreter computes bf16 wrongly (triton issue 11584), so there the GEMMs run in fp32."""
    interp = _interpreting()
    upcast = interp and dtype == torch.bfloat16
    tf32 = dtype == torch.float32 and torch.backends.cudnn.allow_tf32 and not interp
    return upcast, ("tf32" if tf32 else "ieee")


def _device_ctx(t: torch.Tensor):
    # Triton launches on the current device: make it the tensors' device (tensors on cuda:1 work)
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


def _sm_count(t: torch.Tensor) -> int:
    if t.is_cuda:
        return torch.cuda.get_device_properties(t.device).multi_processor_count
    return 132  # interpreter: plan as for an H100 so CPU tests exercise the same grid shapes


def _image_span(t: torch.Tensor) -> int:
    """One past the largest element offset inside one image (dims 1..3) of a 4-D tensor view."""
    return 1 + sum((size - 1) * abs(stride) for size, stride in zip(t.shape[1:], t.stride()[1:]))


@dataclass(frozen=True)
class Loop:
    """One runtime loop of a kernel, as the static cost report (bsconv_fused/bench/static) sees it in the SASS.

    trips: iterations per program (an average where programs differ, e.g. tiles per group).
    optional: the compiler may or may not keep it (e.g. a loop it can prove runs at most once); the report accepts
    either, which is exact when the loop is gone because it was unrolled or ran once."""

    name: str
    trips: float
    optional: bool = False


@dataclass
class Launch:
    """One kernel launch, described before it runs: the launchers run it, the ahead-of-time compile test
    (bsconv_fused/triton/aot.py) compiles exactly it for sm_80/sm_90 without a GPU, and the static cost report
    counts its compiled instructions.

    loops: the kernel's runtime loops (those that survive as backward branches in the SASS; static_range loops
    are unrolled and do not count), in the order their bodies start in the code, outer before inner. The static
    report multiplies each loop body by the product of the trips of the loops that contain it, and fails when
    the compiled kernel has a different number of loops than declared here."""

    kernel: object
    grid: Tuple[int, ...]
    args: Tuple
    meta: dict = field(default_factory=dict)
    loops: Tuple[Loop, ...] = ()
    # per-program working buffers the kernel writes completely and re-reads (a few MB, reused by every tile of a
    # program: L2-resident on a GPU, never DRAM traffic of the layer); traffic counts report them separately
    scratch: Tuple[torch.Tensor, ...] = ()

    def run(self) -> None:
        self.kernel[self.grid](*self.args, **self.meta)


def _const_loops(*loops: Loop) -> Tuple[Loop, ...]:
    """Loops over a compile-time trip count that survive compilation: one trip folds away."""
    return tuple(lp for lp in loops if lp.trips != 1)


def _channel_loop(name: str, channels: int, block: int) -> Tuple[Loop, ...]:
    """A loop over a channel count passed at run time: it stays a loop even for one trip, unless the count is 1
    (the JIT then makes it a constant and the loop folds away)."""
    return (Loop(name, cdiv(channels, block)),) if channels != 1 else ()


def _arch(t: torch.Tensor) -> int:
    """Compute capability x 10 of t's GPU; 90 off a GPU (the interpreter and meta tensors plan as for an H100)."""
    if t.is_cuda:
        major, minor = torch.cuda.get_device_capability(t.device)
        return 10 * major + minor
    return 90


def forward_launches(x, pw, dw, bias: Optional[torch.Tensor], mid_bias: Optional[torch.Tensor],
                     stride: Pair, padding: Pair, dilation: Pair,
                     activation: int = 0, arch: Optional[int] = None) -> Tuple[torch.Tensor, List[Launch]]:
    """The forward's launches. activation: the epilogue's code (bsconv_fused/activation.py), the kernels' ACT
    constexpr: each code is its own compiled variant, and 0 compiles to the kernel without epilogue. arch: plan for
    this compute capability x 10 instead of x's device (the ahead-of-time compile builds sm_80 launches from meta
    tensors)."""
    g = validate(x, pw, dw, bias, mid_bias, stride, padding, dilation)
    name_of(activation)  # validates: an unknown code must not reach the kernels
    pw = pw_as_matrix(pw).contiguous()
    dw = dw.contiguous()
    bias = bias.contiguous() if bias is not None else None
    mid_bias = mid_bias.contiguous() if mid_bias is not None else None
    # BSCONV_FUSED_TRITON_FWD pins the forward variant ("staged", "rows", "flat" or "separable"): for tests and tuning
    channels_last = x.dim() == 4 and x.stride(1) == 1 and g.C_in > 1
    p = plan_forward(g, os.environ.get("BSCONV_FUSED_TRITON_FWD", ""), channels_last, x.element_size(),
                     arch if arch is not None else _arch(x))
    y = empty_output(x, g.out_shape)
    upcast, precision = _dtype_flags(x.dtype)
    co_blocks = cdiv(g.C_out, p.block_co)
    tiles = co_blocks * g.N * p.tiles_per_image
    common = dict(KH=g.kh, KW=g.kw, SH=g.stride[0], SW=g.stride[1], DH=g.dilation[0], DW=g.dilation[1],
                  BLOCK_CO=p.block_co, BLOCK_CI=p.block_ci, HAS_BIAS=bias is not None, HAS_MID=mid_bias is not None,
                  ACT=activation, UPCAST=upcast, INPUT_PRECISION=precision, num_warps=p.num_warps)
    tensors = (x, pw, dw, bias if bias is not None else dw, mid_bias if mid_bias is not None else dw, y)
    sizes = (g.C_in, g.C_out, g.H, g.W, g.Ho, g.Wo, *x.stride(), *y.stride())
    n_ci = cdiv(g.C_in, p.block_ci)
    if p.variant == "rows":
        return y, [_rows_launch(g, p, x, y, tensors, sizes, common)]
    if p.variant == "staged":
        # persistent grid: the programs that fit the GPU at once, each looping over its tiles; the interpreter runs
        # programs one after another, so there a few programs cover the same tile loop
        programs = min(tiles, 4 if _interpreting() else p.programs_per_sm * _sm_count(x))
        n_rows = g.kh if p.unroll_kw else g.kh * g.kw
        # the intermediate in x's dtype (the unfused path's rounding), fp32 for fp32; one slot per program
        scratch = torch.empty(programs * (p.halo_lanes + taps_pow2(g)) * p.block_co, dtype=x.dtype, device=x.device)
        launch = Launch(
            bsconv_fwd_staged_kernel, (programs,),
            tensors + (scratch,) + sizes + (tiles, n_rows, g.padding[0], g.padding[1]),
            dict(common, TH=p.th, TW=p.tw, HALO_H=p.halo_h, HALO_W=p.halo_w, HALO_LANES=p.halo_lanes,
                 OUT_LANES=p.out_lanes, TAPS=taps_pow2(g), TILES_W=p.tiles_w, TILES_PER_IMG=p.tiles_per_image,
                 CO_BLOCKS=co_blocks, num_stages=p.num_stages, UNROLL_KW=p.unroll_kw, ROW_TAPS=g.kw if p.unroll_kw else 1, X_OFF32=_image_span(x) < 2**31, Y_OFF32=_image_span(y) < 2**31),
            # loops with a single trip (C_in == 1, one kernel row) are specialised away by the JIT (ints equal to 1
            # become constants)
            loops=(Loop("tiles", tiles / programs),) + ((Loop("c_in", n_ci),) if g.C_in > 1 else ())
                  + ((Loop("taps", n_rows),) if n_rows > 1 else ()),
            scratch=(scratch,),
        )
        return y, [launch]
    # 1-D grid, channel block fastest: the programs sharing an x halo tile are adjacent (L2 reuse), and no grid
    # axis limit (65535 on axes 1 and 2) caps the number of tiles.
    tile = (dict(TH=p.th, TW=p.tw, HALO_H=p.halo_h, HALO_W=p.halo_w, HALO_LANES=p.halo_lanes,
                 OUT_LANES=p.out_lanes) if p.flat else
            dict(TH=p.th, TW=p.tw, HALO_H=p.halo_h, HALO_W=p.halo_w, OUT_H=p.out_h, OUT_W=p.out_w))
    launch = Launch(
        bsconv_fwd_flat_kernel if p.flat else bsconv_fwd_kernel, (tiles,),
        tensors + sizes + (p.tiles_w, p.tiles_per_image, g.padding[0], g.padding[1]),
        dict(common, **tile),
        # flat: C_in blocks, then one loop over all taps. Separable: C_in blocks, then the kernel rows, then the
        # kernel columns. Loops over constexpr trips are optional: LLVM unrolls or keeps them depending on the
        # target and the body (Triton 3.8: sm_90 unrolls kw for 3x3 on 16x16 tiles and keeps it for 5x5 on 4x32
        # ones, sm_80 keeps it for 3x3; kh goes too on tiles of a few channels).
        loops=_channel_loop("c_in", g.C_in, p.block_ci) + (
            _const_loops(Loop("tap", g.kh * g.kw, optional=True)) if p.flat else
            _const_loops(Loop("kh", g.kh, optional=True), Loop("kw", g.kw, optional=True))),
    )
    return y, [launch]


def _span(t: torch.Tensor, images: int) -> int:
    """One past the largest element offset inside `images` consecutive images of a 4-D tensor view."""
    return _image_span(t) + (images - 1) * abs(t.stride(0))


def _rows_launch(g, p, x, y, tensors, sizes, common) -> Launch:
    """The whole-rows forward (bsconv_fwd_rows_kernel): persistent programs over (image group, band, C_out block)
    tiles, channel block fastest."""
    tiles = rows_tiles(g, p)
    programs = min(tiles, 4 if _interpreting() else p.programs_per_sm * _sm_count(x))
    slot_pix = p.imgs * p.slot_h * p.slot_w
    taps = taps_pow2(g)
    # one slot per program: the zero-padded tile of t in x's dtype (fp32 for fp32), then the tap weights
    scratch = torch.empty(programs * (slot_pix + taps) * p.block_co, dtype=x.dtype, device=x.device)
    n_chunks = cdiv(p.imgs * p.rows * g.Wo, p.out_chunk)
    n_taps = g.kh * g.kw
    return Launch(
        bsconv_fwd_rows_kernel, (programs,),
        tensors + (scratch,) + sizes + (g.N, tiles, n_taps, n_chunks),
        dict(common, PH=g.padding[0], PW=g.padding[1], IMGS=p.imgs, ROWS=p.rows, BANDS=p.tiles_h,
             CO_BLOCKS=cdiv(g.C_out, p.block_co), IN_W=g.W, OUT_W=g.Wo, GEMM_ROWS=p.gemm_rows, ROW0=p.row0,
             SLOT_H=p.slot_h, SLOT_W=p.slot_w, M_LANES=p.halo_lanes, OUT_CHUNK=p.out_chunk, TAPS=taps,
             ZERO_STEPS=cdiv(slot_pix - p.imgs * p.gemm_rows * g.W, p.halo_lanes), num_stages=p.num_stages,
             X_OFF32=_span(x, p.imgs) < 2**31, Y_OFF32=_span(y, p.imgs) < 2**31),
        # tiles, C_in steps, output chunks, taps. A run-time count equal to 1 may be specialised to a constant by
        # the JIT (its loop folds away) or not (Triton 3.9 kept the one-chunk loop of the 7x7 stride-2 layers):
        # such a loop is declared optional, exact either way since it runs once
        loops=(Loop("tiles", tiles / programs),) + ((Loop("c_in", cdiv(g.C_in, p.block_ci)),) if g.C_in > 1 else ())
              + (Loop("chunks", n_chunks, optional=n_chunks == 1),)
              + ((Loop("taps", n_taps),) if n_taps > 1 else ()),
        scratch=(scratch,),
    )


def _max_offset(shape, strides) -> int:
    return sum((n - 1) * abs(st) for n, st in zip(shape, strides) if n > 0)


def _needs_64bit(*tensors) -> bool:
    """Whether an element offset inside one image (dims 1..3) can reach 2^31 in any of the tensors: the kernels
    then compute within-image offsets in int64 (the image base always is)."""
    return any(_max_offset(t.shape[1:], t.stride()[1:]) >= 2**31 for t in tensors)


def _vector_channels(t: torch.Tensor) -> bool:
    """Whether the JIT will prove 16-byte vector loads along t's channels: channel stride 1 (an int equal to 1 is
    specialised to a constant) and the other strides and the base address divisible by 16 (tt.divisibility)."""
    return (t.stride(1) == 1 and all(s % 16 == 0 for i, s in enumerate(t.stride()) if i != 1)
            and t.data_ptr() % 16 == 0)


def backward_launches(grad_y, x, pw, dw, mid_bias: Optional[torch.Tensor], stride: Pair, padding: Pair,
                      dilation: Pair, output_mask) -> Tuple[List[Launch], Callable[[], Tuple[torch.Tensor, ...]]]:
    """The launches of the backward and the function that finishes it (reduces the group partials)."""
    g = validate(x, pw, dw, None, mid_bias, stride, padding, dilation)
    if tuple(grad_y.shape) != g.out_shape:
        raise ValueError(f"grad_y must have the output shape {g.out_shape}, got {tuple(grad_y.shape)}")
    if grad_y.dtype != x.dtype or grad_y.device != x.device:
        raise ValueError(f"grad_y must match x in dtype and device, got {grad_y.dtype} on {grad_y.device}")
    need_dx, need_dpw, need_ddw, need_db, need_dm = (bool(m) for m in output_mask)
    need_dm = need_dm and mid_bias is not None
    pw_shape = pw.shape
    pw = pw_as_matrix(pw).contiguous()
    taps = g.kh * g.kw
    # depthwise weights as (taps, C_out) fp32: one contiguous vector load per tap and thread in the dt loop
    dwt = dw.reshape(g.C_out, taps).t().float().contiguous()
    mid_bias = mid_bias.contiguous() if mid_bias is not None else None
    # a channels-fast grad_y (channels_last, aligned) loads 8 channels per vector; otherwise every element is a
    # scalar load with its own address, and the plan takes fewer lanes to keep the unrolled taps in registers
    # BSCONV_FUSED_TRITON_BWD pins the plan ("split" or "fused"): for tests and tuning
    p = plan_backward(g, _vector_channels(grad_y), x.element_size(), os.environ.get("BSCONV_FUSED_TRITON_BWD", ""))
    upcast, precision = _dtype_flags(x.dtype)
    empty = x.new_empty((0,))
    off64 = _needs_64bit(grad_y, x)
    common = dict(KW=g.kw, SH=g.stride[0], SW=g.stride[1], DH=g.dilation[0], DW=g.dilation[1],
                  OFF64=off64, UPCAST=upcast, INPUT_PRECISION=precision, num_warps=p.num_warps)
    # the kernel-row loop is a runtime loop over kh_n = KH (see _dt_block); a KH of 1 is specialised away by the
    # JIT (ints equal to 1 become constants), and so is its loop
    kh_loops = lambda name: (Loop(name, g.kh),) if g.kh > 1 else ()  # noqa: E731
    launches = []
    dx = empty
    parts = [empty] * 4
    # fused dx + d_pw launch (dt generated once for both) where the plan chose it and both are asked for
    fused = p.fused and need_dx and (need_dpw or need_dm)
    if fused:
        dx = empty_output(x, x.shape)
        off64_f = off64 or _needs_64bit(dx)
        tiles = p.ftiles_h * p.ftiles_w
        total = g.N * tiles
        nci = cdiv(g.C_in, p.block_ci_f)
        groups = weight_grad_groups(g, total, nci, g.C_in if need_dpw else 0, _sm_count(x), FUSED_PROGRAMS_PER_SM)
        per_group = cdiv(total, groups)
        groups = cdiv(total, per_group)
        parts[0] = torch.empty((groups, g.C_out, g.C_in), dtype=torch.float32, device=x.device) if need_dpw else empty
        parts[3] = torch.empty((groups, g.C_out), dtype=torch.float32, device=x.device) if need_dm else empty
        launches.append(Launch(
            bsconv_bwd_dxw_kernel, (nci, groups),
            (grad_y, x, pw, dwt, dx, parts[0], parts[3],
             g.C_in, g.C_out, g.H, g.W, g.Ho, g.Wo,
             *grad_y.stride(), *x.stride(), *dx.stride(),
             p.ftiles_w, tiles, total, per_group,
             g.padding[0], g.padding[1], g.kh),
            dict(common, OFF64=off64_f, QH=p.fqh, QW=p.fqw, LANES=p.flanes, BLOCK_CO=p.block_co_f,
                 BLOCK_CI=p.block_ci_f, NEED_DPW=need_dpw, NEED_DMID=need_dm, num_stages=1),
            # at one tile per group LLVM removes the tile loop for some bodies and keeps it for others
            loops=(Loop("tiles", total / groups, optional=per_group == 1),) + kh_loops("dt_kh"),
        ))
    elif need_dx:
        dx = empty_output(x, x.shape)
        off64 = off64 or _needs_64bit(dx)
        tiles = p.tiles_h * p.tiles_w
        launches.append(Launch(
            bsconv_bwd_dx_kernel, (cdiv(g.C_in, p.block_ci) * g.N * tiles,),
            (grad_y, pw, dwt, dx,
             g.C_in, g.C_out, g.H, g.W, g.Ho, g.Wo,
             *grad_y.stride(), *dx.stride(),
             p.tiles_w, tiles,
             g.padding[0], g.padding[1], g.kh),
            dict(common, OFF64=off64, QH=p.qh, QW=p.qw, LANES=p.lanes, BLOCK_CO=p.block_co, BLOCK_CI=p.block_ci),
            loops=(Loop("co_blocks", cdiv(g.C_out, p.block_co)),) + kh_loops("dt_kh"),
        ))
    if need_ddw or need_db or ((need_dpw or need_dm) and not fused):
        co_blocks = cdiv(g.C_out, p.block_co_w)
        sm = _sm_count(x)
        # launch 1 (LEAD): recomputes t for d_dw, and d_bias (no dt at all); launch 2: dt and d_pw in C_in blocks
        # of up to 256 (dt generated once per block), and d_mid (= sum of dt) in its C_in-block-0 programs
        blocks = []
        if need_ddw or need_db:
            blocks.append((1, 0, 0, True))
        if (need_dpw or need_dm) and not fused:
            blocks.append((cdiv(g.C_in, p.block_ci_w), p.block_ci_w, g.C_in, False))

        def part(groups, *shape):
            return torch.empty((groups,) + shape, dtype=torch.float32, device=x.device)

        for nci, block_ci, cols, lead in blocks:
            lead_ddw = lead and need_ddw
            qh, qw, lanes, tiles_w = ((p.lqh, p.lqw, p.llanes, p.ltiles_w) if lead else
                                      (p.wqh, p.wqw, p.wlanes, p.utiles_w))
            utiles = (p.ltiles_h if lead else p.utiles_h) * tiles_w
            total = g.N * utiles
            # d_dw in per-tap register accumulators (all taps unrolled) up to 3x3; per-tap reductions beyond
            ddw_reg = lead_ddw and taps <= DDW_REG_MAX_TAPS
            ddw_m = min(lanes, 2048 // p.block_co_w)
            groups = weight_grad_groups(g, total, co_blocks * nci, cols if (need_dpw and not lead) else 0, sm)
            per_group = cdiv(total, groups)
            groups = cdiv(total, per_group)
            if lead:
                parts[1] = part(groups, g.C_out, taps) if need_ddw else empty
                parts[2] = part(groups, g.C_out) if need_db else empty
            else:
                parts[0] = part(groups, g.C_out, g.C_in) if need_dpw else empty
                parts[3] = part(groups, g.C_out) if need_dm else empty
            flags = dict(NEED_DPW=need_dpw and not lead, NEED_DDW=lead_ddw, NEED_DBIAS=need_db and lead,
                         NEED_DMID=need_dm and not lead, HAS_MID=mid_bias is not None, TAPS=taps_pow2(g))
            # the tile loop of a group: at one tile per group LLVM removes it for some bodies and keeps it for others
            loops = ((Loop("tiles", total / groups, optional=per_group == 1),)
                     + ((Loop("t_ci", cdiv(g.C_in, p.block_k)),) + (() if ddw_reg else kh_loops("ddw_kh"))
                        if lead_ddw else ())
                     + (kh_loops("dt_kh") if not lead else ()))
            # LEAD with d_dw: one fp32 (lanes, C_out block) slot per program to re-layout t (see the kernel),
            # laid out like grad_y (channels fastest when grad_y's are): L1/L2-resident, never read by the host
            channels_fast = grad_y.stride(1) == 1
            stq, stc = (p.block_co_w, 1) if channels_fast else (1, lanes)
            scratch = (torch.empty(co_blocks * nci * groups * lanes * p.block_co_w, dtype=torch.float32,
                                   device=x.device) if lead_ddw else empty)
            launches.append(Launch(
                bsconv_bwd_w_kernel, (co_blocks * nci, groups),
                (grad_y, x, pw, dwt, mid_bias if mid_bias is not None else dwt,
                 *parts, scratch,
                 g.C_in, g.C_out, g.H, g.W, g.Ho, g.Wo,
                 *grad_y.stride(), *x.stride(),
                 tiles_w, utiles, total, per_group, nci, 0, max(cols, 1), stq, stc,
                 g.padding[0], g.padding[1], g.kh),
                # no software pipelining: its multi-buffered copies of the tile loop spill the LEAD kernel
                dict(common, QH=qh, QW=qw, LANES=lanes, BLOCK_CO=p.block_co_w, LEAD=lead,
                     BLOCK_CI=max(16, block_ci), BLOCK_K=p.block_k, num_stages=1, DDW_REG=ddw_reg,
                     DDW_KH=g.kh if ddw_reg else 1, DDW_R=lanes // ddw_m, DDW_M=ddw_m, **flags),
                loops=loops,
            ))

    def finish():
        # fixed-order reduction of the group partials: deterministic. Gradients not asked for are fresh empty
        # tensors: a custom op's outputs may not alias each other.
        none = lambda: x.new_empty((0,))  # noqa: E731
        dpw = parts[0].sum(0).to(pw.dtype).reshape(pw_shape) if need_dpw else none()
        ddw = parts[1].sum(0).to(dw.dtype).reshape(dw.shape) if need_ddw else none()
        db = parts[2].sum(0).to(x.dtype) if need_db else none()
        dm = parts[3].sum(0).to(x.dtype) if need_dm else none()
        return (dx if need_dx else none()), dpw, ddw, db, dm

    return launches, finish


def forward(x, pw, dw, bias, mid_bias, stride: Pair, padding: Pair, dilation: Pair,
            activation: int = 0) -> torch.Tensor:
    y, launches = forward_launches(x, pw, dw, bias, mid_bias, stride, padding, dilation, activation)
    with _device_ctx(x):
        for launch in launches:
            launch.run()
    return y


def backward(grad_y, x, pw, dw, mid_bias, stride: Pair, padding: Pair, dilation: Pair, output_mask):
    launches, finish = backward_launches(grad_y, x, pw, dw, mid_bias, stride, padding, dilation, output_mask)
    with _device_ctx(x):
        for launch in launches:
            launch.run()
        return finish()
