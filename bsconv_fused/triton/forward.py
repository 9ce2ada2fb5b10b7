"""Fused BSConvU forward kernels: y = act(DW(PW(x) + mid_bias) + bias) in one launch.

The default is bsconv_fwd_staged_kernel (design, cost model and static sm_90 predictions: docs/triton-kernels.md):
a persistent grid; per tile, the pointwise conv runs once on the tile's input halo (tl.dot, fp32 accumulation), the
intermediate t is staged once in the program's L2-resident scratch slot, and every depthwise tap reads its shifted
window from there with vector loads (L1 hits). Static prediction (benchmarks/results/static-sm90, H100 SXM, fp16,
N=64, K=3 stride 1, channels_last; predicted speedup over the ideal two-layer roofline): 32->64@112 1.64x,
64->128@56 1.41x, 128->128@56 1.26x, 128->256@28 1.10x, 256->256@28 0.87x, 512->512@14 0.57x, 1024->1024@7 0.21x
(NCHW 1.37x down to 0.31x). plan.forward_loses flags the layers its model predicts slower, and "auto" runs the
two-layer path there.

The deep, small-map layers run bsconv_fwd_rows_kernel instead where the plan's model predicts it faster (the GEMM
over in-image pixels only, whole images or full-width row bands per tile, see its docstring). Static prediction
(same setup, full report's per-kernel bound), channels_last before -> after: 128->256@28 1.10x -> 1.36x,
256->256@28 0.87x -> 1.31x, 256->512@14 0.77x -> 1.17x, 512->512@14 0.57x -> 0.89x, 512->1024@7 0.25x -> 1.02x,
1024->1024@7 0.21x -> 0.93x; NCHW 256->512@14 0.77x -> 0.85x, 512->512@14 0.62x -> 0.82x, 512->1024@7 0.35x ->
0.68x, 1024->1024@7 0.31x -> 0.61x (28x28 and larger NCHW layers keep the staged kernel). docs/triton-kernels.md
has the table.

Two older variants (the intermediate kept in registers, taps through tl.gather) stay selectable with
BSCONV_FUSED_TRITON_FWD=separable|flat for comparison; their SASS costs 5.8-22 thread-instructions per output
element and tap against the staged kernel's 1.75:
   - bsconv_fwd_kernel: power-of-two halo extents, the intermediate as a (rows, cols, channels) tile, a vertical
     then a horizontal gather along short axes;
   - bsconv_fwd_flat_kernel: any halo extents flattened to a power-of-two lane count, one gather per tap.
Common to all: mid_bias is added at in-image halo pixels only; out-of-image pixels are 0 because x is loaded as 0
there, so the depthwise zero padding is exact; bias and activation epilogue (ACT, epilogue.py: fp32, before the
cast to y's dtype); y stored in its own strides (NCHW, channels_last, any view).

Traffic, counted through the interpreter (benchmarks/results/traffic.md, N=1, fp32, real channel counts):
| layer              | unique / (x + weights + y) | requested / bound | dot FLOPs / pointwise FLOPs |
| 32->64 @56, K3 s1  | 1.00                       | 1.61              | 1.31 |
| 128->128 @28, K3   | 1.00                       | 2.89              | 1.31 |
| 256->256 @28, K3   | 1.00                       | 4.93              | 1.31 |
| 128->256 @28, K3 s2| 1.00                       | 5.99              | 1.31 |
| 128->128 @28, K5   | 1.00                       | 4.46              | 2.29 |
| 1024->1024 @7, K3  | 1.00                       | 2.76              | 2.61 |
(Table measured for the gather kernels. The staged kernel adds its scratch slots to the unique bytes: programs x
(halo lanes + taps) x BLOCK_CO elements, a few MB on a GPU, reused by every tile of a program, so L2-resident;
regenerating the table for it was not done, see docs/triton-kernels.md.)
Nothing but x, the weights and y touches memory (the fused bound) on every layer; the pointwise work is the halo
overhead of the tile plan (1.31x for 3x3, not 9x); requested > unique is the halo overlap and the C_out blocks that
each re-read their x tile (L2 hits on a GPU: the channel block is the fastest grid axis). 7x7 maps pay 2.61x: a 9x9
halo in 128 lanes. Regenerate: `python -m bsconv_fused.bench.traffic_report --markdown benchmarks/results/traffic.md`.
"""
import triton
import triton.language as tl

from .epilogue import apply_activation


@triton.jit
def _program_tile(C_out, tiles_w, tiles_per_img, TH: tl.constexpr, TW: tl.constexpr, BLOCK_CO: tl.constexpr):
    # 1-D grid, channel block fastest: the programs sharing one x halo tile run together and hit L2
    pid = tl.program_id(0)
    co_blocks = tl.cdiv(C_out, BLOCK_CO)
    pid_co = pid % co_blocks
    pid_t = pid // co_blocks
    n = pid_t // tiles_per_img
    tile = pid_t % tiles_per_img
    return n, (tile // tiles_w) * TH, (tile % tiles_w) * TW, pid_co * BLOCK_CO + tl.arange(0, BLOCK_CO)


@triton.jit
def _pointwise_halo(x_ptr, pw_ptr, mid_ptr, n, oh0, ow0, co, co_ok, C_in, H, W, sxn, sxc, sxh, sxw, PH, PW,
                    SH: tl.constexpr, SW: tl.constexpr, HALO_H: tl.constexpr, HALO_W: tl.constexpr,
                    LANES: tl.constexpr, BLOCK_CO: tl.constexpr, BLOCK_CI: tl.constexpr, HAS_MID: tl.constexpr,
                    UPCAST: tl.constexpr, INPUT_PRECISION: tl.constexpr, X_OFF32: tl.constexpr):
    """t[halo pixel, co] = PW(x) (+ mid_bias in the image) over the tile's input halo, pixels flattened row-major
    (LANES >= HALO_H * HALO_W, a power of two). Out-of-image pixels are 0: the depthwise zero padding.

    X_OFF32: every element offset inside one image of x fits 32 bits (the launcher checks x's strides); the image
    base stays 64-bit. Saves the 64-bit multiply-adds of every halo pixel and channel."""
    hp = tl.arange(0, LANES)
    ih = oh0 * SH - PH + hp // HALO_W
    iw = ow0 * SW - PW + hp % HALO_W
    in_img = (hp < HALO_H * HALO_W) & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
    # 64-bit offsets: a tensor may exceed 2**31 elements
    if X_OFF32:
        x_pix = x_ptr + n.to(tl.int64) * sxn + (ih * sxh + iw * sxw)
    else:
        x_pix = x_ptr + n.to(tl.int64) * sxn + ih.to(tl.int64) * sxh + iw.to(tl.int64) * sxw
    t = tl.zeros((LANES, BLOCK_CO), dtype=tl.float32)
    for ci0 in range(0, C_in, BLOCK_CI):
        ci = ci0 + tl.arange(0, BLOCK_CI)
        ci_ok = ci < C_in
        if X_OFF32:
            xt = tl.load(x_pix[:, None] + ci[None, :] * sxc, mask=in_img[:, None] & ci_ok[None, :], other=0.0)
        else:
            xt = tl.load(x_pix[:, None] + ci[None, :].to(tl.int64) * sxc, mask=in_img[:, None] & ci_ok[None, :],
                         other=0.0)
        wt = tl.load(pw_ptr + co[None, :] * C_in + ci[:, None], mask=ci_ok[:, None] & co_ok[None, :], other=0.0)
        if UPCAST:  # the interpreter computes bf16 wrongly: do the GEMM in fp32 there
            xt = xt.to(tl.float32)
            wt = wt.to(tl.float32)
        t = tl.dot(xt, wt, t, input_precision=INPUT_PRECISION)
    if HAS_MID:
        mb = tl.load(mid_ptr + co, mask=co_ok, other=0.0).to(tl.float32)
        t += tl.where(in_img[:, None], mb[None, :], 0.0)
    return t


@triton.jit
def bsconv_fwd_kernel(
    x_ptr, pw_ptr, dw_ptr, bias_ptr, mid_ptr, y_ptr,
    C_in, C_out, H, W, Ho, Wo,
    sxn, sxc, sxh, sxw,
    syn, syc, syh, syw,
    tiles_w, tiles_per_img,
    PH, PW,
    KH: tl.constexpr, KW: tl.constexpr,
    SH: tl.constexpr, SW: tl.constexpr, DH: tl.constexpr, DW: tl.constexpr,
    TH: tl.constexpr, TW: tl.constexpr, HALO_H: tl.constexpr, HALO_W: tl.constexpr,
    OUT_H: tl.constexpr, OUT_W: tl.constexpr,
    BLOCK_CO: tl.constexpr, BLOCK_CI: tl.constexpr,
    HAS_BIAS: tl.constexpr, HAS_MID: tl.constexpr, ACT: tl.constexpr,
    UPCAST: tl.constexpr, INPUT_PRECISION: tl.constexpr,
):
    """The separable-gather forward: power-of-two halo extents, the intermediate as a (rows, cols, co) tile."""
    n, oh0, ow0, co = _program_tile(C_out, tiles_w, tiles_per_img, TH, TW, BLOCK_CO)
    co_ok = co < C_out
    t = _pointwise_halo(x_ptr, pw_ptr, mid_ptr, n, oh0, ow0, co, co_ok, C_in, H, W, sxn, sxc, sxh, sxw, PH, PW,
                        SH, SW, HALO_H, HALO_W, HALO_H * HALO_W, BLOCK_CO, BLOCK_CI, HAS_MID, UPCAST, INPUT_PRECISION,
                        False)

    # Each tap is a vertical then a horizontal gather, each along a short axis (<= 32): Triton lowers such a gather
    # to about one warp shuffle per element. One gather over the flattened halo costs halo/32 shuffles and selects
    # per element (16x more for a 16x16 halo, seen in the sm_90 PTX).
    t3 = tl.reshape(t, (HALO_H, HALO_W, BLOCK_CO))
    orow = tl.arange(0, OUT_H)
    ocol = tl.arange(0, OUT_W)
    acc = tl.zeros((OUT_H, OUT_W, BLOCK_CO), dtype=tl.float32)
    for kh in range(KH):
        # lanes past the tile (OUT_H padded to a power of two) gather a valid, unused row
        rows = tl.minimum(orow * SH + kh * DH, HALO_H - 1)
        tv = tl.gather(t3, tl.broadcast_to(rows[:, None, None], (OUT_H, HALO_W, BLOCK_CO)), 0)
        for kw in range(KW):
            cols = tl.minimum(ocol * SW + kw * DW, HALO_W - 1)
            g = tl.gather(tv, tl.broadcast_to(cols[None, :, None], (OUT_H, OUT_W, BLOCK_CO)), 1)
            wv = tl.load(dw_ptr + co * (KH * KW) + (kh * KW + kw), mask=co_ok, other=0.0).to(tl.float32)
            acc += g * wv[None, None, :]
    if HAS_BIAS:
        acc += tl.load(bias_ptr + co, mask=co_ok, other=0.0).to(tl.float32)[None, None, :]
    acc = apply_activation(acc, ACT)  # the epilogue (epilogue.py): code 0 compiles to nothing

    oh = oh0 + orow
    ow = ow0 + ocol
    row_ok = (orow < TH) & (oh < Ho)
    col_ok = (ocol < TW) & (ow < Wo)
    y_row = n.to(tl.int64) * syn + oh.to(tl.int64) * syh
    y_off = y_row[:, None, None] + ow.to(tl.int64)[None, :, None] * syw + co.to(tl.int64)[None, None, :] * syc
    mask = row_ok[:, None, None] & col_ok[None, :, None] & co_ok[None, None, :]
    tl.store(y_ptr + y_off, acc.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def bsconv_fwd_flat_kernel(
    x_ptr, pw_ptr, dw_ptr, bias_ptr, mid_ptr, y_ptr,
    C_in, C_out, H, W, Ho, Wo,
    sxn, sxc, sxh, sxw,
    syn, syc, syh, syw,
    tiles_w, tiles_per_img,
    PH, PW,
    KH: tl.constexpr, KW: tl.constexpr,
    SH: tl.constexpr, SW: tl.constexpr, DH: tl.constexpr, DW: tl.constexpr,
    TH: tl.constexpr, TW: tl.constexpr, HALO_H: tl.constexpr, HALO_W: tl.constexpr,
    HALO_LANES: tl.constexpr, OUT_LANES: tl.constexpr,
    BLOCK_CO: tl.constexpr, BLOCK_CI: tl.constexpr,
    HAS_BIAS: tl.constexpr, HAS_MID: tl.constexpr, ACT: tl.constexpr,
    UPCAST: tl.constexpr, INPUT_PRECISION: tl.constexpr,
):
    """The flat-gather forward: any halo extents (flattened to HALO_LANES, a power of two), one gather per tap.

    For small maps (7x7, 14x14 at stride 2) where power-of-two halo extents would recompute most of the pointwise
    conv: a 9x9 halo costs 128 lanes here against 256 as a 16x16 tile. Its gather costs HALO_LANES/32 shuffles per
    element and tap, small next to the deep pointwise GEMM of such layers."""
    n, oh0, ow0, co = _program_tile(C_out, tiles_w, tiles_per_img, TH, TW, BLOCK_CO)
    co_ok = co < C_out
    t = _pointwise_halo(x_ptr, pw_ptr, mid_ptr, n, oh0, ow0, co, co_ok, C_in, H, W, sxn, sxc, sxh, sxw, PH, PW,
                        SH, SW, HALO_H, HALO_W, HALO_LANES, BLOCK_CO, BLOCK_CI, HAS_MID, UPCAST, INPUT_PRECISION,
                        False)
    op = tl.arange(0, OUT_LANES)
    orow = op // TW
    ocol = op % TW
    lane_ok = op < TH * TW
    acc = tl.zeros((OUT_LANES, BLOCK_CO), dtype=tl.float32)
    for tap in range(KH * KW):  # a runtime loop: unrolled, the gathered copies stay live together and spill
        kh = tap // KW
        kw = tap % KW
        src = (orow * SH + kh * DH) * HALO_W + ocol * SW + kw * DW
        src = tl.where(lane_ok, src, 0)  # padding lanes gather a valid (unused) element
        g = tl.gather(t, tl.broadcast_to(src[:, None], (OUT_LANES, BLOCK_CO)), 0)
        wv = tl.load(dw_ptr + co * (KH * KW) + tap, mask=co_ok, other=0.0).to(tl.float32)
        acc += g * wv[None, :]
    if HAS_BIAS:
        acc += tl.load(bias_ptr + co, mask=co_ok, other=0.0).to(tl.float32)[None, :]
    acc = apply_activation(acc, ACT)

    oh = oh0 + orow
    ow = ow0 + ocol
    out_ok = lane_ok & (oh < Ho) & (ow < Wo)
    y_off = n.to(tl.int64) * syn + oh.to(tl.int64) * syh + ow.to(tl.int64) * syw
    tl.store(y_ptr + y_off[:, None] + co[None, :].to(tl.int64) * syc, acc.to(y_ptr.dtype.element_ty),
             mask=out_ok[:, None] & co_ok[None, :])


@triton.jit
def bsconv_fwd_staged_kernel(
    x_ptr, pw_ptr, dw_ptr, bias_ptr, mid_ptr, y_ptr, scratch_ptr,
    C_in, C_out, H, W, Ho, Wo,
    sxn, sxc, sxh, sxw,
    syn, syc, syh, syw,
    total_tiles, n_rows,
    PH, PW,
    KH: tl.constexpr, KW: tl.constexpr,
    SH: tl.constexpr, SW: tl.constexpr, DH: tl.constexpr, DW: tl.constexpr,
    TH: tl.constexpr, TW: tl.constexpr, HALO_H: tl.constexpr, HALO_W: tl.constexpr,
    HALO_LANES: tl.constexpr, OUT_LANES: tl.constexpr, TAPS: tl.constexpr,
    TILES_W: tl.constexpr, TILES_PER_IMG: tl.constexpr, CO_BLOCKS: tl.constexpr,
    UNROLL_KW: tl.constexpr, ROW_TAPS: tl.constexpr,
    BLOCK_CO: tl.constexpr, BLOCK_CI: tl.constexpr,
    HAS_BIAS: tl.constexpr, HAS_MID: tl.constexpr, ACT: tl.constexpr,
    UPCAST: tl.constexpr, INPUT_PRECISION: tl.constexpr, X_OFF32: tl.constexpr, Y_OFF32: tl.constexpr,
):
    """The staged forward: a persistent grid, the intermediate staged once per tile in the program's scratch slot.

    Each program owns one slot of (HALO_LANES + TAPS) x BLOCK_CO elements in scratch_ptr (channels fastest; a few
    MB for the whole grid, so it stays in L2 and the tap re-reads hit L1) and walks tiles pid, pid + programs, ...
    (channel block fastest: the programs that run together share their x halo in L2). Per tile:
    1. t = PW(x) on the halo (tl.dot, fp32 accumulation) + mid_bias at in-image pixels, stored into the slot in the
       slot's dtype: x's dtype for fp16/bf16 (exactly the rounding the unfused path applies when it stores t),
       fp32 for fp32. The depthwise weights of the channel block go into the slot's tail, transposed to
       (tap, channel) and in their own dtype (exact): every tap then reads its weight vector with one vector load
       instead of a strided gather. (fp32 weights there would save the conversions but give the weight vector a
       4-wide layout unlike t's 8-wide one: Triton then converts it through shared memory at every tap.)
    2. a CTA barrier (bar.sync: the block's global writes become visible to the block), then each chunk of
       OUT_CHUNK output pixels reads, per tap, its shifted (pixels x BLOCK_CO) window of the slot: contiguous
       channels, one vector load per 8 (16-bit) or 4 (fp32) channels, addresses that differ between taps by a
       compile-time constant only. No shuffles, no gathers, no per-tap masks (lanes past the tile read a valid,
       unused row). The chunk loop is a runtime loop: it bounds the loads in flight (registers).
    3. bias, activation (ACT), store y; a barrier before the next tile overwrites the slot.
    """
    pid = tl.program_id(0)
    nprog = tl.num_programs(0)
    VEC: tl.constexpr = 128 // scratch_ptr.dtype.element_ty.primitive_bitwidth  # elements per 16 bytes
    cl = tl.arange(0, BLOCK_CO)
    hp = tl.arange(0, HALO_LANES)
    slot = scratch_ptr + pid * ((HALO_LANES + TAPS) * BLOCK_CO)
    wslot = slot + HALO_LANES * BLOCK_CO
    tp = tl.arange(0, TAPS)
    for tile in range(pid, total_tiles, nprog):
        # the tile counts are compile-time constants (the tile plan is per geometry anyway): divisions by
        # constants instead of the ~20-instruction integer divisions by run-time values
        pid_co = tile % CO_BLOCKS
        pid_t = tile // CO_BLOCKS
        n = pid_t // TILES_PER_IMG
        tt = pid_t % TILES_PER_IMG
        oh0 = (tt // TILES_W) * TH
        ow0 = (tt % TILES_W) * TW
        co = pid_co * BLOCK_CO + cl
        co_ok = co < C_out
        t = _pointwise_halo(x_ptr, pw_ptr, mid_ptr, n, oh0, ow0, co, co_ok, C_in, H, W, sxn, sxc, sxh, sxw, PH, PW,
                            SH, SW, HALO_H, HALO_W, HALO_LANES, BLOCK_CO, BLOCK_CI, HAS_MID, UPCAST,
                            INPUT_PRECISION, X_OFF32)
        wt = tl.load(dw_ptr + co[None, :] * (KH * KW) + tp[:, None], mask=(tp[:, None] < KH * KW) & co_ok[None, :],
                     other=0.0)
        tl.debug_barrier()  # every thread is done reading the previous tile's slot
        tl.store(tl.max_contiguous(tl.multiple_of(slot + hp[:, None] * BLOCK_CO + cl[None, :], [1, VEC]), [1, VEC]),
                 t.to(scratch_ptr.dtype.element_ty))
        tl.store(wslot + tp[:, None] * BLOCK_CO + cl[None, :], wt)
        tl.debug_barrier()  # the slot holds the whole tile
        pix = tl.arange(0, OUT_LANES)
        orow = pix // TW
        ocol = pix % TW
        lane_ok = pix < TH * TW
        # the slot row of tap (0, 0) per output pixel; lanes past the tile read row 0
        win = tl.where(lane_ok, orow * (SH * HALO_W) + ocol * SW, 0) * BLOCK_CO
        acc = tl.zeros((OUT_LANES, BLOCK_CO), dtype=tl.float32)
        # The tap loops stay runtime loops in every geometry (n_rows and ROW_TAPS are chosen by the launcher):
        # fully unrolled, the compiler hoists every tap's loads and runs out of registers. UNROLL_KW (n_rows = KH,
        # ROW_TAPS = KW): a kernel row per iteration, its columns unrolled, their window addresses differing by
        # immediates. Otherwise (n_rows = KH * KW, ROW_TAPS = 1): one tap per iteration, the fewest registers.
        for r in range(n_rows):
            if UNROLL_KW:
                kh = r
                kw0 = 0
            else:
                kh = r // KW
                kw0 = r % KW
            row = slot + win[:, None] + ((kh * DH * HALO_W + kw0 * DW) * BLOCK_CO) + cl[None, :]
            for j in tl.static_range(ROW_TAPS):
                # the slot is 16-byte aligned and channels are contiguous in runs of BLOCK_CO: say so, for the
                # compiles that do not know the pointer's alignment (ahead-of-time ones); vector loads either way
                tv = tl.load(tl.max_contiguous(tl.multiple_of(row + j * DW * BLOCK_CO, [1, VEC]), [1, VEC]))
                wv = tl.load(tl.max_contiguous(tl.multiple_of(wslot + (kh * KW + kw0 + j) * BLOCK_CO + cl, [VEC]), [VEC]))
                acc += tv.to(tl.float32) * wv.to(tl.float32)[None, :]
        if HAS_BIAS:
            acc += tl.load(bias_ptr + co, mask=co_ok, other=0.0).to(tl.float32)[None, :]
        acc = apply_activation(acc, ACT)
        oh = oh0 + orow
        ow = ow0 + ocol
        out_ok = lane_ok & (oh < Ho) & (ow < Wo)
        y_img = y_ptr + n.to(tl.int64) * syn
        if Y_OFF32:  # every offset inside one image of y fits 32 bits (checked by the launcher)
            y_ptrs = y_img + (oh * syh + ow * syw)[:, None] + co[None, :] * syc
        else:
            y_ptrs = y_img + (oh.to(tl.int64) * syh + ow.to(tl.int64) * syw)[:, None] + co[None, :].to(tl.int64) * syc
        tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=out_ok[:, None] & co_ok[None, :])


@triton.jit
def bsconv_fwd_rows_kernel(
    x_ptr, pw_ptr, dw_ptr, bias_ptr, mid_ptr, y_ptr, scratch_ptr,
    C_in, C_out, H, W, Ho, Wo,
    sxn, sxc, sxh, sxw,
    syn, syc, syh, syw,
    N, total_tiles, n_taps, n_chunks,
    KH: tl.constexpr, KW: tl.constexpr,
    SH: tl.constexpr, SW: tl.constexpr, DH: tl.constexpr, DW: tl.constexpr,
    PH: tl.constexpr, PW: tl.constexpr,
    IMGS: tl.constexpr, ROWS: tl.constexpr, BANDS: tl.constexpr, CO_BLOCKS: tl.constexpr,
    IN_W: tl.constexpr, OUT_W: tl.constexpr, GEMM_ROWS: tl.constexpr, ROW0: tl.constexpr,
    SLOT_H: tl.constexpr, SLOT_W: tl.constexpr, M_LANES: tl.constexpr, OUT_CHUNK: tl.constexpr,
    TAPS: tl.constexpr, ZERO_STEPS: tl.constexpr,
    BLOCK_CO: tl.constexpr, BLOCK_CI: tl.constexpr,
    HAS_BIAS: tl.constexpr, HAS_MID: tl.constexpr, ACT: tl.constexpr,
    UPCAST: tl.constexpr, INPUT_PRECISION: tl.constexpr, X_OFF32: tl.constexpr, Y_OFF32: tl.constexpr,
):
    """The whole-rows forward: the pointwise GEMM over in-image pixels only, full-width rows, no horizontal halo.

    A tile is IMGS whole images (ROWS = Ho, BANDS = 1) or a band of ROWS full-width output rows of one image
    (IMGS = 1). Where the staged kernel computes t on a (th + k - 1) x (tw + k - 1) halo padded to a power of two
    (a 7x7 map: a 9x9 halo in 128 lanes), this one computes it on the tile's in-image pixels only, the images
    flattened one after another (2 x 49 pixels in 128 lanes, 5 x 49 in 256, 196 in 256): the GEMM has M = M_LANES
    (>= IMGS x GEMM_ROWS x W), K = C_in in BLOCK_CI steps (software-pipelined), N = BLOCK_CO (up to 128).
    Persistent programs; each owns a scratch slot laid out as the zero-padded tile (IMGS x SLOT_H x SLOT_W pixels x
    BLOCK_CO, then TAPS x BLOCK_CO depthwise weights). The slot is zeroed once per program: the GEMM only ever
    writes the in-image columns (and, whole-image tiles, the in-image rows), so the padding stays zero and every
    tap reads its shifted window without masks, as in the staged kernel. Band tiles recompute their halo rows
    (GEMM_ROWS = the band's input rows; rows outside the image are masked to 0, their mid_bias too).
    Tile order: channel block fastest (the programs running together share the x rows in L2).
    The output is walked in OUT_CHUNK-lane chunks (a runtime loop: bounds the registers of the tap loads)."""
    pid = tl.program_id(0)
    nprog = tl.num_programs(0)
    VEC: tl.constexpr = 128 // scratch_ptr.dtype.element_ty.primitive_bitwidth
    SLOT_PIX: tl.constexpr = IMGS * SLOT_H * SLOT_W
    GEMM_PIX: tl.constexpr = IMGS * GEMM_ROWS * IN_W
    OUT_PIX: tl.constexpr = IMGS * ROWS * OUT_W
    cl = tl.arange(0, BLOCK_CO)
    slot = scratch_ptr + pid * ((SLOT_PIX + TAPS) * BLOCK_CO)
    wslot = slot + SLOT_PIX * BLOCK_CO
    tp = tl.arange(0, TAPS)
    # zero the slot's padding once (the GEMM never writes it): per image, the rows above the GEMM rows, the
    # columns left and right of them, the rows below, enumerated in that order (divisions by constants)
    TOP: tl.constexpr = ROW0 * SLOT_W
    SIDE: tl.constexpr = SLOT_W - IN_W
    MID: tl.constexpr = GEMM_ROWS * SIDE
    BORDER: tl.constexpr = SLOT_H * SLOT_W - GEMM_ROWS * IN_W
    hp = tl.arange(0, M_LANES)
    for z in tl.static_range(ZERO_STEPS):
        b = z * M_LANES + hp
        e = b % BORDER
        m = tl.maximum(e - TOP, 0)
        side_c = m % (SIDE if SIDE > 0 else 1)
        mid_pix = (ROW0 + m // (SIDE if SIDE > 0 else 1)) * SLOT_W + tl.where(side_c < PW, side_c, side_c + IN_W)
        pix = tl.where(e < TOP, e, tl.where(e < TOP + MID, mid_pix, (ROW0 + GEMM_ROWS) * SLOT_W + (e - TOP - MID)))
        zp = (b // BORDER) * (SLOT_H * SLOT_W) + pix
        tl.store(slot + zp[:, None] * BLOCK_CO + cl[None, :], tl.zeros((M_LANES, BLOCK_CO), scratch_ptr.dtype.element_ty),
                 mask=(b < IMGS * BORDER)[:, None])
    # GEMM lanes: image, row, column of each pixel (divisions by constants)
    g_img = hp // (GEMM_ROWS * IN_W)
    g_row = (hp % (GEMM_ROWS * IN_W)) // IN_W
    g_col = hp % IN_W
    lane_real = hp < GEMM_PIX
    # slot row of each GEMM lane; padding lanes point at row 0 (never stored: masked)
    s_row = tl.where(lane_real, (g_img * SLOT_H + ROW0 + g_row) * SLOT_W + PW + g_col, 0)
    for tile in range(pid, total_tiles, nprog):
        pid_co = tile % CO_BLOCKS
        rest = tile // CO_BLOCKS
        band = rest % BANDS
        n0 = (rest // BANDS) * IMGS
        oh0 = band * ROWS
        co = pid_co * BLOCK_CO + cl
        co_ok = co < C_out
        ih = oh0 * SH - PH + ROW0 + g_row
        in_img = lane_real & (n0 + g_img < N) & (ih >= 0) & (ih < H)
        if X_OFF32:
            x_pix = x_ptr + n0.to(tl.int64) * sxn + (g_img * sxn + ih * sxh + g_col * sxw)
        else:
            x_pix = (x_ptr + n0.to(tl.int64) * sxn + g_img.to(tl.int64) * sxn + ih.to(tl.int64) * sxh
                     + g_col.to(tl.int64) * sxw)
        # mid_bias is the accumulator's initial value at in-image pixels (x is 0 elsewhere, so t stays 0 there):
        # its vector is dead before the GEMM instead of live across it (32 registers in the wgmma layout: the
        # 5-image tiles spill otherwise)
        if HAS_MID:
            mb = tl.load(mid_ptr + co, mask=co_ok, other=0.0).to(tl.float32)
            t = tl.where(in_img[:, None], mb[None, :], 0.0)
        else:
            t = tl.zeros((M_LANES, BLOCK_CO), dtype=tl.float32)
        for ci0 in range(0, C_in, BLOCK_CI):
            ci = ci0 + tl.arange(0, BLOCK_CI)
            ci_ok = ci < C_in
            if X_OFF32:
                xt = tl.load(x_pix[:, None] + ci[None, :] * sxc, mask=in_img[:, None] & ci_ok[None, :], other=0.0)
            else:
                xt = tl.load(x_pix[:, None] + ci[None, :].to(tl.int64) * sxc, mask=in_img[:, None] & ci_ok[None, :],
                             other=0.0)
            wt = tl.load(pw_ptr + co[None, :] * C_in + ci[:, None], mask=ci_ok[:, None] & co_ok[None, :], other=0.0)
            if UPCAST:  # the interpreter computes bf16 wrongly: do the GEMM in fp32 there
                xt = xt.to(tl.float32)
                wt = wt.to(tl.float32)
            t = tl.dot(xt, wt, t, input_precision=INPUT_PRECISION)
        wt = tl.load(dw_ptr + co[None, :] * (KH * KW) + tp[:, None], mask=(tp[:, None] < KH * KW) & co_ok[None, :],
                     other=0.0)
        tl.debug_barrier()  # every thread is done reading the previous tile's slot (and the zeroing is done)
        tl.store(tl.max_contiguous(tl.multiple_of(slot + s_row[:, None] * BLOCK_CO + cl[None, :], [1, 16]), [1, VEC]),
                 t.to(scratch_ptr.dtype.element_ty), mask=lane_real[:, None])
        tl.store(wslot + tp[:, None] * BLOCK_CO + cl[None, :], wt)
        tl.debug_barrier()  # the slot holds the whole tile
        if HAS_BIAS:
            bv = tl.load(bias_ptr + co, mask=co_ok, other=0.0).to(tl.float32)
        for c in range(n_chunks):
            q = c * OUT_CHUNK + tl.arange(0, OUT_CHUNK)
            o_img = q // (ROWS * OUT_W)
            o_row = (q % (ROWS * OUT_W)) // OUT_W
            o_col = q % OUT_W
            oh = oh0 + o_row
            out_ok = (q < OUT_PIX) & (n0 + o_img < N) & (oh < Ho)
            # the slot row of tap (0, 0) per output pixel; lanes past the tile read row 0
            win = tl.where(q < OUT_PIX, (o_img * SLOT_H + o_row * SH) * SLOT_W + o_col * SW, 0) * BLOCK_CO
            acc = tl.zeros((OUT_CHUNK, BLOCK_CO), dtype=tl.float32)
            for r in range(n_taps):  # a runtime loop: unrolled, every tap's loads are hoisted (registers)
                kh = r // KW
                kw = r % KW
                row = slot + win[:, None] + ((kh * DH * SLOT_W + kw * DW) * BLOCK_CO) + cl[None, :]
                # a pointer's divisibility is in bytes (Triton's AxisInfo: addptr multiplies the offset's by the
                # element size), contiguity in elements: 16-byte aligned runs of VEC channels -> 16-byte loads
                tv = tl.load(tl.max_contiguous(tl.multiple_of(row, [1, 16]), [1, VEC]))
                wv = tl.load(tl.max_contiguous(tl.multiple_of(wslot + r * BLOCK_CO + cl, [16]), [VEC]))
                acc += tv.to(tl.float32) * wv.to(tl.float32)[None, :]
            if HAS_BIAS:
                acc += bv[None, :]
            acc = apply_activation(acc, ACT)
            y_img = y_ptr + n0.to(tl.int64) * syn
            if Y_OFF32:  # every offset inside the tile's images of y fits 32 bits (checked by the launcher)
                y_ptrs = y_img + (o_img * syn + oh * syh + o_col * syw)[:, None] + co[None, :] * syc
            else:
                y_ptrs = y_img + (o_img.to(tl.int64) * syn + oh.to(tl.int64) * syh + o_col.to(tl.int64) * syw)[:, None] \
                    + co[None, :].to(tl.int64) * syc
            tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=out_ok[:, None] & co_ok[None, :])
