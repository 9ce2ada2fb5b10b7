"""Fused BSConvU backward kernels. Both work at input resolution, where dt = DW^T(dy) and dx live.

For an input pixel q and a tap k, the output pixel that read t[q] through tap k is p = (q + pad - k*dil) / stride
(when divisible and inside the output). So dt[q, o] = sum_k dw[o, k] * dy[p(q, k), o] needs only loads of dy at
shifted addresses: no halo, no recomputation, and dt never reaches device memory. The same dy loads give the
depthwise weight gradient: ddw[o, k] = sum_q t[q, o] * dy[p(q, k), o].

- bsconv_bwd_dx_kernel: dx[q, ci] = sum_o dt[q, o] * pw[o, ci]; one program per (image, input tile, C_in block),
  looping over C_out blocks (dt regenerated per block from dy).
- bsconv_bwd_w_kernel: d_pw (= sum_q dt^T x), d_dw, d_mid (= sum of dt over in-image q), d_bias (= sum of dy); one
  program per (C_out block, C_in block, pixel group); each group owns a fixed range of tiles and writes its partial
  sums to its own slot, and the launcher reduces the slots in a fixed order: deterministic, no atomics. The
  intermediate t (for d_dw) is recomputed from x with tl.dot, only by the C_in-block-0 programs.

Traffic of both kernels together, counted through the interpreter (benchmarks/results/traffic.md, N=1, fp32):
unique bytes are 1.03-1.83x the two-kernel bound of performance.md (each kernel reads x and dy once; the rest is the
fp32 group partials of the weight gradients, large relative to dx at N=1 only: their count is capped by the SM
count, not the batch); tl.dot work is 3.4-4.1x the pointwise GEMM against an ideal of 3 (dx, d_pw and the
recomputed t, times the lane padding of the tile). Requested bytes are several times the unique ones: the K*K
shifted reads of dy, L1/L2 hits on a GPU. dt and t never reach memory.
"""
import triton
import triton.language as tl


@triton.jit
def _dy_tap(gy_n, ih, iw, q_ok, co, co_ok, sgc, sgh, sgw, Ho, Wo, PH, PW, kh, kw,
            SH: tl.constexpr, SW: tl.constexpr, DH: tl.constexpr, DW: tl.constexpr):
    """dy[p(q, tap), co] for every lane q (0 where no output pixel read q through this tap), in fp32."""
    nh = ih + PH - kh * DH
    nw = iw + PW - kw * DW
    # clamp before dividing: // and % of negatives differ between the interpreter and the GPU
    nh_c = tl.maximum(nh, 0)
    nw_c = tl.maximum(nw, 0)
    oh = nh_c // SH
    ow = nw_c // SW
    ok = q_ok & (nh >= 0) & (nw >= 0) & (oh < Ho) & (ow < Wo)
    if SH > 1:
        ok = ok & (nh_c % SH == 0)
    if SW > 1:
        ok = ok & (nw_c % SW == 0)
    off = oh.to(tl.int64) * sgh + ow.to(tl.int64) * sgw
    v = tl.load(gy_n + off[:, None] + co[None, :].to(tl.int64) * sgc, mask=ok[:, None] & co_ok[None, :], other=0.0)
    return v.to(tl.float32)


@triton.jit
def bsconv_bwd_dx_kernel(
    gy_ptr, pw_ptr, dw_ptr, dx_ptr,
    C_in, C_out, H, W, Ho, Wo,
    sgn, sgc, sgh, sgw,
    sdn, sdc, sdh, sdw,
    tiles_w, tiles_per_img,
    PH, PW,
    KH: tl.constexpr, KW: tl.constexpr,
    SH: tl.constexpr, SW: tl.constexpr, DH: tl.constexpr, DW: tl.constexpr,
    QH: tl.constexpr, QW: tl.constexpr, LANES: tl.constexpr,
    BLOCK_CO: tl.constexpr, BLOCK_CI: tl.constexpr,
    UPCAST: tl.constexpr, INPUT_PRECISION: tl.constexpr,
):
    # 1-D grid, C_in block fastest (programs of one tile share its dy loads in L2)
    pid = tl.program_id(0)
    ci_blocks = tl.cdiv(C_in, BLOCK_CI)
    pid_ci = pid % ci_blocks
    pid_t = pid // ci_blocks
    n = pid_t // tiles_per_img
    tile = pid_t % tiles_per_img
    q = tl.arange(0, LANES)
    ih = (tile // tiles_w) * QH + q // QW
    iw = (tile % tiles_w) * QW + q % QW
    q_ok = (q < QH * QW) & (ih < H) & (iw < W)
    ci = pid_ci * BLOCK_CI + tl.arange(0, BLOCK_CI)
    ci_ok = ci < C_in
    gy_n = gy_ptr + n.to(tl.int64) * sgn

    acc = tl.zeros((LANES, BLOCK_CI), dtype=tl.float32)
    for co0 in range(0, C_out, BLOCK_CO):
        co = co0 + tl.arange(0, BLOCK_CO)
        co_ok = co < C_out
        dt = tl.zeros((LANES, BLOCK_CO), dtype=tl.float32)
        # a runtime loop over taps, not an unrolled one: unrolled, the compiler hoists every tap's loads and
        # address tensors together and spills (seen in the sm_90 cubin's resource usage)
        for tap in range(KH * KW):
            kh = tap // KW
            kw = tap % KW
            dy = _dy_tap(gy_n, ih, iw, q_ok, co, co_ok, sgc, sgh, sgw, Ho, Wo, PH, PW, kh, kw, SH, SW, DH, DW)
            wv = tl.load(dw_ptr + co * (KH * KW) + tap, mask=co_ok, other=0.0).to(tl.float32)
            dt += dy * wv[None, :]
        wt = tl.load(pw_ptr + co[:, None] * C_in + ci[None, :], mask=co_ok[:, None] & ci_ok[None, :], other=0.0)
        if UPCAST:
            acc = tl.dot(dt, wt.to(tl.float32), acc, input_precision=INPUT_PRECISION)
        else:
            # dt is rounded to the weight dtype for the tensor cores, as the unfused path stores it
            acc = tl.dot(dt.to(wt.dtype), wt, acc, input_precision=INPUT_PRECISION)

    dx_off = n.to(tl.int64) * sdn + ih.to(tl.int64) * sdh + iw.to(tl.int64) * sdw
    tl.store(dx_ptr + dx_off[:, None] + ci[None, :].to(tl.int64) * sdc, acc.to(dx_ptr.dtype.element_ty),
             mask=q_ok[:, None] & ci_ok[None, :])


@triton.jit
def bsconv_bwd_w_kernel(
    gy_ptr, x_ptr, pw_ptr, dw_ptr, mid_ptr,
    dpw_part, ddw_part, dbias_part, dmid_part,
    C_in, C_out, H, W, Ho, Wo,
    sgn, sgc, sgh, sgw,
    sxn, sxc, sxh, sxw,
    utiles_w, utiles_per_img, total_tiles, tiles_per_group, ci_blocks, ci_start,
    PH, PW,
    KH: tl.constexpr, KW: tl.constexpr, TAPS: tl.constexpr,
    SH: tl.constexpr, SW: tl.constexpr, DH: tl.constexpr, DW: tl.constexpr,
    QH: tl.constexpr, QW: tl.constexpr, LANES: tl.constexpr,
    BLOCK_CO: tl.constexpr, BLOCK_CI: tl.constexpr, BLOCK_K: tl.constexpr,
    NEED_DPW: tl.constexpr, NEED_DDW: tl.constexpr, NEED_DBIAS: tl.constexpr, NEED_DMID: tl.constexpr,
    HAS_MID: tl.constexpr, LEAD: tl.constexpr,
    UPCAST: tl.constexpr, INPUT_PRECISION: tl.constexpr,
):
    # LEAD programs (launched for C_in block 0) also do the per-channel reductions: d_dw needs the full pointwise
    # conv, which only they recompute. A compile-time flag, so the other launch carries none of that code.
    pid_c = tl.program_id(0)
    grp = tl.program_id(1)
    pid_co = pid_c // ci_blocks
    pid_ci = pid_c % ci_blocks

    co = pid_co * BLOCK_CO + tl.arange(0, BLOCK_CO)
    co_ok = co < C_out
    ci_blk = ci_start + pid_ci * BLOCK_CI + tl.arange(0, BLOCK_CI)
    ci_blk_ok = ci_blk < C_in
    q = tl.arange(0, LANES)
    taps = tl.arange(0, TAPS)
    if HAS_MID:
        mb = tl.load(mid_ptr + co, mask=co_ok, other=0.0).to(tl.float32)

    acc_pw = tl.zeros((BLOCK_CO, BLOCK_CI), dtype=tl.float32)
    acc_dw = tl.zeros((TAPS, BLOCK_CO), dtype=tl.float32)
    acc_b = tl.zeros((BLOCK_CO,), dtype=tl.float32)
    acc_m = tl.zeros((BLOCK_CO,), dtype=tl.float32)

    t_begin = grp * tiles_per_group
    for tt in range(t_begin, tl.minimum(t_begin + tiles_per_group, total_tiles)):
        n = tt // utiles_per_img
        tile = tt % utiles_per_img
        rr = (tile // utiles_w) * QH + q // QW
        cc = (tile % utiles_w) * QW + q % QW
        lane_ok = q < QH * QW
        q_ok = lane_ok & (rr < H) & (cc < W)  # lanes as input pixels
        gy_n = gy_ptr + n.to(tl.int64) * sgn
        x_pix = x_ptr + n.to(tl.int64) * sxn + rr.to(tl.int64) * sxh + cc.to(tl.int64) * sxw

        if NEED_DDW and LEAD:
            t = tl.zeros((LANES, BLOCK_CO), dtype=tl.float32)
            # the recomputation of t walks C_in in chunks of BLOCK_K (smaller than the d_pw block: registers)
            for ci0 in range(0, C_in, BLOCK_K):
                ci = ci0 + tl.arange(0, BLOCK_K)
                ci_ok = ci < C_in
                xt = tl.load(x_pix[:, None] + ci[None, :].to(tl.int64) * sxc, mask=q_ok[:, None] & ci_ok[None, :],
                             other=0.0)
                wt = tl.load(pw_ptr + co[None, :] * C_in + ci[:, None], mask=ci_ok[:, None] & co_ok[None, :], other=0.0)
                if UPCAST:
                    xt = xt.to(tl.float32)
                    wt = wt.to(tl.float32)
                t = tl.dot(xt, wt, t, input_precision=INPUT_PRECISION)
            if HAS_MID:
                t += tl.where(q_ok[:, None], mb[None, :], 0.0)

        dt = tl.zeros((LANES, BLOCK_CO), dtype=tl.float32)
        for tap in range(KH * KW):  # runtime loop: see the dx kernel
            kh = tap // KW
            kw = tap % KW
            dy = _dy_tap(gy_n, rr, cc, q_ok, co, co_ok, sgc, sgh, sgw, Ho, Wo, PH, PW, kh, kw, SH, SW, DH, DW)
            wv = tl.load(dw_ptr + co * (KH * KW) + tap, mask=co_ok, other=0.0).to(tl.float32)
            dt += dy * wv[None, :]
            if NEED_DDW and LEAD:
                contrib = tl.sum(t * dy, axis=0)
                acc_dw += tl.where(taps[:, None] == tap, contrib[None, :], 0.0)

        if NEED_DPW:
            xb = tl.load(x_pix[:, None] + ci_blk[None, :].to(tl.int64) * sxc,
                         mask=q_ok[:, None] & ci_blk_ok[None, :], other=0.0)
            if UPCAST:
                acc_pw = tl.dot(tl.trans(dt), xb.to(tl.float32), acc_pw, input_precision=INPUT_PRECISION)
            else:
                acc_pw = tl.dot(tl.trans(dt.to(xb.dtype)), xb, acc_pw, input_precision=INPUT_PRECISION)
        if NEED_DMID and LEAD:
            acc_m += tl.sum(dt, axis=0)
        if NEED_DBIAS and LEAD:
            # the same lanes read as output pixels: the tile grid spans max(input, output) so each is seen once
            p_ok = lane_ok & (rr < Ho) & (cc < Wo)
            off = rr.to(tl.int64) * sgh + cc.to(tl.int64) * sgw
            dyp = tl.load(gy_n + off[:, None] + co[None, :].to(tl.int64) * sgc, mask=p_ok[:, None] & co_ok[None, :],
                          other=0.0)
            acc_b += tl.sum(dyp.to(tl.float32), axis=0)

    g64 = grp.to(tl.int64)
    if NEED_DPW:
        tl.store(dpw_part + g64 * C_out * C_in + co[:, None] * C_in + ci_blk[None, :], acc_pw,
                 mask=co_ok[:, None] & ci_blk_ok[None, :])
    if LEAD:
        if NEED_DDW:
            tl.store(ddw_part + g64 * C_out * (KH * KW) + co[None, :] * (KH * KW) + taps[:, None], acc_dw,
                     mask=(taps[:, None] < KH * KW) & co_ok[None, :])
        if NEED_DMID:
            tl.store(dmid_part + g64 * C_out + co, acc_m, mask=co_ok)
        if NEED_DBIAS:
            tl.store(dbias_part + g64 * C_out + co, acc_b, mask=co_ok)
