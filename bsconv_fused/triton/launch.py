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
from .backward import bsconv_bwd_dx_kernel, bsconv_bwd_w_kernel
from .forward import bsconv_fwd_flat_kernel, bsconv_fwd_kernel, bsconv_fwd_staged_kernel
from .plan import cdiv, plan_backward, plan_forward, taps_pow2, weight_grad_groups

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

    trips: iterations per program (an average where programs differ, e.g. tiles per group)."""

    name: str
    trips: float


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


def forward_launches(x, pw, dw, bias: Optional[torch.Tensor], mid_bias: Optional[torch.Tensor],
                     stride: Pair, padding: Pair, dilation: Pair) -> Tuple[torch.Tensor, List[Launch]]:
    g = validate(x, pw, dw, bias, mid_bias, stride, padding, dilation)
    pw = pw_as_matrix(pw).contiguous()
    dw = dw.contiguous()
    bias = bias.contiguous() if bias is not None else None
    mid_bias = mid_bias.contiguous() if mid_bias is not None else None
    # BSCONV_FUSED_TRITON_FWD pins the forward variant ("staged", "flat" or "separable"): for tests and tuning
    channels_last = x.dim() == 4 and x.stride(1) == 1 and g.C_in > 1
    p = plan_forward(g, os.environ.get("BSCONV_FUSED_TRITON_FWD", ""), channels_last, x.element_size())
    y = empty_output(x, g.out_shape)
    upcast, precision = _dtype_flags(x.dtype)
    co_blocks = cdiv(g.C_out, p.block_co)
    tiles = co_blocks * g.N * p.tiles_per_image
    common = dict(KH=g.kh, KW=g.kw, SH=g.stride[0], SW=g.stride[1], DH=g.dilation[0], DW=g.dilation[1],
                  BLOCK_CO=p.block_co, BLOCK_CI=p.block_ci, HAS_BIAS=bias is not None, HAS_MID=mid_bias is not None,
                  UPCAST=upcast, INPUT_PRECISION=precision, num_warps=p.num_warps)
    tensors = (x, pw, dw, bias if bias is not None else dw, mid_bias if mid_bias is not None else dw, y)
    sizes = (g.C_in, g.C_out, g.H, g.W, g.Ho, g.Wo, *x.stride(), *y.stride())
    n_ci = cdiv(g.C_in, p.block_ci)
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
        loops=(Loop("c_in", n_ci), Loop("taps", g.kh * g.kw)) if p.flat else
              (Loop("c_in", n_ci), Loop("kh", g.kh)),
    )
    return y, [launch]


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
    dw = dw.contiguous()
    mid_bias = mid_bias.contiguous() if mid_bias is not None else None
    p = plan_backward(g)
    upcast, precision = _dtype_flags(x.dtype)
    empty = x.new_empty((0,))
    common = dict(KH=g.kh, KW=g.kw, SH=g.stride[0], SW=g.stride[1], DH=g.dilation[0], DW=g.dilation[1],
                  QH=p.qh, QW=p.qw, LANES=p.lanes, BLOCK_CO=p.block_co,
                  UPCAST=upcast, INPUT_PRECISION=precision, num_warps=p.num_warps)
    co_blocks = cdiv(g.C_out, p.block_co)
    launches = []
    dx = empty
    if need_dx:
        dx = empty_output(x, x.shape)
        tiles = p.tiles_h * p.tiles_w
        launches.append(Launch(
            bsconv_bwd_dx_kernel, (cdiv(g.C_in, p.block_ci) * g.N * tiles,),
            (grad_y, pw, dw, dx,
             g.C_in, g.C_out, g.H, g.W, g.Ho, g.Wo,
             *grad_y.stride(), *dx.stride(),
             p.tiles_w, tiles,
             g.padding[0], g.padding[1]),
            dict(common, BLOCK_CI=p.block_ci),
        ))
    parts = [empty] * 4
    if need_dpw or need_ddw or need_db or need_dm:
        utiles = p.utiles_h * p.utiles_w
        total = g.N * utiles
        # launch 1 (LEAD): the first C_in block of d_pw (narrow: it also holds the recomputed t) with the
        # per-channel reductions; launch 2: the remaining C_in of d_pw in wide blocks
        rest = max(0, g.C_in - p.block_k)
        blocks = [(0, 1, p.block_k, True)]
        if need_dpw and rest:
            blocks.append((p.block_k, cdiv(rest, p.block_ci_w), p.block_ci_w, False))
        groups = weight_grad_groups(g, p, co_blocks, sum(b[1] for b in blocks), _sm_count(x))
        per_group = cdiv(total, groups)
        groups = cdiv(total, per_group)

        def part(*shape):
            return torch.empty((groups,) + shape, dtype=torch.float32, device=x.device)

        parts = [part(g.C_out, g.C_in) if need_dpw else empty, part(g.C_out, g.kh * g.kw) if need_ddw else empty,
                 part(g.C_out) if need_db else empty, part(g.C_out) if need_dm else empty]
        flags = dict(NEED_DPW=need_dpw, NEED_DDW=need_ddw, NEED_DBIAS=need_db, NEED_DMID=need_dm,
                     HAS_MID=mid_bias is not None, TAPS=taps_pow2(g))
        for ci_start, nci, block_ci, lead in blocks:
            launches.append(Launch(
                bsconv_bwd_w_kernel, (co_blocks * nci, groups),
                (grad_y, x, pw, dw, mid_bias if mid_bias is not None else dw,
                 *parts,
                 g.C_in, g.C_out, g.H, g.W, g.Ho, g.Wo,
                 *grad_y.stride(), *x.stride(),
                 p.utiles_w, utiles, total, per_group, nci, ci_start,
                 g.padding[0], g.padding[1]),
                # no software pipelining: its multi-buffered copies of the tile loop spill the LEAD kernel
                dict(LEAD=lead, BLOCK_CI=block_ci, BLOCK_K=p.block_k, num_stages=1, **flags, **common),
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


def forward(x, pw, dw, bias, mid_bias, stride: Pair, padding: Pair, dilation: Pair) -> torch.Tensor:
    y, launches = forward_launches(x, pw, dw, bias, mid_bias, stride, padding, dilation)
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
