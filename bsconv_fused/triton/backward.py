"""Fused BSConvU backward kernels. All work at input resolution, where dt = DW^T(dy) and dx live.

For an input pixel q and a tap k, the output pixel that read t[q] through tap k is p = (q + pad - k*dil) / stride
(when divisible and inside the output). So dt[q, o] = sum_k dw[o, k] * dy[p(q, k), o] needs only loads of dy at
shifted addresses: no halo, no recomputation, and dt never reaches device memory. The same dy loads give the
depthwise weight gradient: ddw[o, k] = sum_q t[q, o] * dy[p(q, k), o].

- bsconv_bwd_dxw_kernel (fused plan, C_out <= 128): dt generated once per tile for both dx = dt @ pw (complete in
  the program: one block spans C_out) and d_pw += dt^T x, d_mid += sum dt (per-group partials). One program per
  (C_in block of up to 128, pixel group).
- bsconv_bwd_dx_kernel (split plan): dx[q, ci] = sum_o dt[q, o] * pw[o, ci]; one program per (image, input tile,
  C_in block), looping over C_out blocks. The plan makes the C_in block as wide as C_in up to 256, so dt is
  generated once per (tile, C_out block) for every layer up to 256 input channels.
- bsconv_bwd_w_kernel, two launches: LEAD (t recomputed from x with tl.dot, d_dw, d_bias; no dt; both plans) and
  d_pw (split plan: dt, d_pw = sum_q dt^T x in C_in blocks of up to 256, d_mid = sum of dt over in-image q in C_in
  block 0). One program per (C_out block, C_in block, pixel group); each group owns a fixed range of tiles and
  writes its partial sums to its own slot, and the launcher reduces the slots in a fixed order: deterministic, no
  atomics. Each launch has its own group count and tile.
plan.plan_backward picks the fused or the split plan by the cost model (plan.predict_plan).

How dt is generated (the hot loop of the kernels). The tap geometry is split by axis: per tile and kernel row kh,
one row offset and row mask per lane (runtime kh loop, computed once per C_out block); per kernel column kw
(unrolled: static_range) one column offset and mask. Within-image offsets are int32 when the launcher proved
every offset of the image fits (OFF64 = False); only the image base is 64-bit. The depthwise weights come
pre-transposed to (taps, C_out) fp32, so each tap's weights are one contiguous vector load per thread, not one
16-bit load per channel.

Static predictions, not GPU timings (sm_90 SASS of the JIT-specialised launches x the H100 per-SM throughput
model, lower bounds; N=64 fp16; table in docs/triton-backward.md): channels_last 32->64@112 1.17x of the ideal
unfused backward (fused plan; 0.80x split), 64->128@56 1.10x, 128->128@56 1.11x; every other suite layer and every
NCHW layer below 1x (plan.backward_loses says so, and the backend choice then runs the two-layer path). The
largest remaining costs: the LEAD launch (t recompute and d_dw), dt generated twice in the split plan (C_out > 128),
and scalar dy loads in NCHW.

Traffic of both kernels together, counted through the interpreter (benchmarks/results/traffic.md, N=1, fp32):
each kernel reads x and dy once; the rest is the fp32 group partials of the weight gradients (their count is
capped by the SM count, not the batch). dt and t never reach memory.
"""
import triton
import triton.language as tl


@triton.jit
def _axis_tap(i, k, P, D: tl.constexpr, S: tl.constexpr, n_out):
    """The output index along one axis that read input index i through kernel index k, and whether it exists."""
    n = i + P - k * D
    if S == 1:
        # no division: out-of-range (incl. negative) indices are masked, never dereferenced
        o = n
        ok = (n >= 0) & (n < n_out)
    else:
        # clamp before dividing: // and % of negatives differ between the interpreter and the GPU
        n_c = tl.maximum(n, 0)
        o = n_c // S
        ok = (n >= 0) & (o < n_out) & (n_c % S == 0)
    return o, ok


@triton.jit
def _tap_offset(i, k, P, D: tl.constexpr, S: tl.constexpr, n_out, stride, OFF64: tl.constexpr):
    """The element offset (index x stride, int64 when OFF64) along one axis of the dy pixel that read input index i
    through kernel index k, and whether that pixel exists: the tap geometry of every dy loop (dt and d_dw)."""
    o, ok = _axis_tap(i, k, P, D, S, n_out)
    if OFF64:
        o = o.to(tl.int64)
    return o * stride, ok


@triton.jit
def _dt_block(gy_n, dwt_ptr, ih, iw, q_ok, co, co_ok, coff, sgh, sgw, C_out, Ho, Wo, PH, PW, kh_n,
              KW: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr, DH: tl.constexpr, DW: tl.constexpr,
              OFF64: tl.constexpr, LANES: tl.constexpr, BLOCK_CO: tl.constexpr):
    """dt[q, co] = sum over taps of dw[co, tap] * dy[p(q, tap), co], in fp32."""
    dt = tl.zeros((LANES, BLOCK_CO), dtype=tl.float32)
    # kh_n is KH passed at run time: a runtime loop the compiler cannot unroll, so the SASS loop structure (and
    # the register use) does not depend on KH; the kw taps are unrolled (their column geometry is immediate math)
    for kh in range(kh_n):
        roff, okh = _tap_offset(ih, kh, PH, DH, SH, Ho, sgh, OFF64)
        rok = q_ok & okh
        for kw in tl.static_range(KW):
            cof, okw = _tap_offset(iw, kw, PW, DW, SW, Wo, sgw, OFF64)
            dy = tl.load(gy_n + (roff + cof)[:, None] + coff[None, :], mask=(rok & okw)[:, None] & co_ok[None, :],
                         other=0.0)
            wv = tl.load(dwt_ptr + (kh * KW + kw) * C_out + co, mask=co_ok, other=0.0)
            dt += dy.to(tl.float32) * wv[None, :]
    return dt


@triton.jit
def _tile_lanes(tt, tiles_per_img, tiles_w, q, lane_ok, H, W, QH: tl.constexpr, QW: tl.constexpr):
    """Tile tt of the batch (QH x QW pixels per tile, row-major tiles per image) as lanes q: its image, its index in
    the image, each lane's row and column, and whether the lane is a pixel of the image."""
    n = tt // tiles_per_img
    tile = tt % tiles_per_img
    r = (tile // tiles_w) * QH + q // QW
    c = (tile % tiles_w) * QW + q % QW
    return n, tile, r, c, lane_ok & (r < H) & (c < W)


@triton.jit
def _store_partials(dpw_part, dmid_part, g64, co, co_ok, cols, cols_ok, n_cols, C_out, pid_ci, acc_pw, acc_m,
                    NEED_DPW: tl.constexpr, NEED_DMID: tl.constexpr):
    """A group's slots of the d_pw partials (C_out x n_cols) and of the d_mid partials (written by C_in block 0)."""
    if NEED_DPW:
        tl.store(dpw_part + g64 * C_out * n_cols + co[:, None] * n_cols + cols[None, :], acc_pw,
                 mask=co_ok[:, None] & cols_ok[None, :])
    if NEED_DMID:
        # a branch, not a mask `co_ok & (pid_ci == 0)`: Triton 3.9's interpreter rejects a mask built from a
        # vector and a scalar comparison ('mask has unsupported dtype')
        if pid_ci == 0:
            tl.store(dmid_part + g64 * C_out + co, acc_m, mask=co_ok)


@triton.jit
def bsconv_bwd_dx_kernel(
    gy_ptr, pw_ptr, dwt_ptr, dx_ptr,
    C_in, C_out, H, W, Ho, Wo,
    sgn, sgc, sgh, sgw,
    sdn, sdc, sdh, sdw,
    tiles_w, tiles_per_img,
    PH, PW, kh_n,
    KW: tl.constexpr,
    SH: tl.constexpr, SW: tl.constexpr, DH: tl.constexpr, DW: tl.constexpr,
    QH: tl.constexpr, QW: tl.constexpr, LANES: tl.constexpr,
    BLOCK_CO: tl.constexpr, BLOCK_CI: tl.constexpr,
    OFF64: tl.constexpr, UPCAST: tl.constexpr, INPUT_PRECISION: tl.constexpr,
):
    # 1-D grid, C_in block fastest (programs of one tile share its dy loads in L2)
    pid = tl.program_id(0)
    ci_blocks = tl.cdiv(C_in, BLOCK_CI)
    pid_ci = pid % ci_blocks
    pid_t = pid // ci_blocks
    q = tl.arange(0, LANES)
    n, tile, ih, iw, q_ok = _tile_lanes(pid_t, tiles_per_img, tiles_w, q, q < QH * QW, H, W, QH, QW)
    ci = pid_ci * BLOCK_CI + tl.arange(0, BLOCK_CI)
    ci_ok = ci < C_in
    gy_n = gy_ptr + n.to(tl.int64) * sgn

    acc = tl.zeros((LANES, BLOCK_CI), dtype=tl.float32)
    for co0 in range(0, C_out, BLOCK_CO):
        co = co0 + tl.arange(0, BLOCK_CO)
        co_ok = co < C_out
        coff = co.to(tl.int64) * sgc if OFF64 else co * sgc
        dt = _dt_block(gy_n, dwt_ptr, ih, iw, q_ok, co, co_ok, coff, sgh, sgw, C_out, Ho, Wo, PH, PW, kh_n,
                       KW, SH, SW, DH, DW, OFF64, LANES, BLOCK_CO)
        wt = tl.load(pw_ptr + co[:, None] * C_in + ci[None, :], mask=co_ok[:, None] & ci_ok[None, :], other=0.0)
        if UPCAST:
            acc = tl.dot(dt, wt.to(tl.float32), acc, input_precision=INPUT_PRECISION)
        else:
            # dt is rounded to the weight dtype for the tensor cores, as the unfused path stores it
            acc = tl.dot(dt.to(wt.dtype), wt, acc, input_precision=INPUT_PRECISION)

    if OFF64:
        dx_off = ih.to(tl.int64) * sdh + iw.to(tl.int64) * sdw
        cio = ci.to(tl.int64) * sdc
    else:
        dx_off = ih * sdh + iw * sdw
        cio = ci * sdc
    dx_n = dx_ptr + n.to(tl.int64) * sdn
    tl.store(dx_n + dx_off[:, None] + cio[None, :], acc.to(dx_ptr.dtype.element_ty),
             mask=q_ok[:, None] & ci_ok[None, :])


@triton.jit
def bsconv_bwd_dxw_kernel(
    gy_ptr, x_ptr, pw_ptr, dwt_ptr, dx_ptr, dpw_part, dmid_part,
    C_in, C_out, H, W, Ho, Wo,
    sgn, sgc, sgh, sgw,
    sxn, sxc, sxh, sxw,
    sdn, sdc, sdh, sdw,
    tiles_w, tiles_per_img, total_tiles, tiles_per_group,
    PH, PW, kh_n,
    KW: tl.constexpr,
    SH: tl.constexpr, SW: tl.constexpr, DH: tl.constexpr, DW: tl.constexpr,
    QH: tl.constexpr, QW: tl.constexpr, LANES: tl.constexpr,
    BLOCK_CO: tl.constexpr, BLOCK_CI: tl.constexpr,
    NEED_DPW: tl.constexpr, NEED_DMID: tl.constexpr,
    OFF64: tl.constexpr, UPCAST: tl.constexpr, INPUT_PRECISION: tl.constexpr,
):
    # dt generated once for dx and d_pw: BLOCK_CO spans all of C_out, so a tile's dx = dt @ pw is complete inside the
    # program (no cross-program reduction) while d_pw += dt^T x and d_mid += sum dt accumulate over the group's tiles
    # like the weight kernel's (per-group partials, reduced in a fixed order by the launcher). One program per
    # (C_in block, group); the C_in blocks of a group walk the same tiles (their dy loads share L2).
    pid_ci = tl.program_id(0)
    grp = tl.program_id(1)
    co = tl.arange(0, BLOCK_CO)
    co_ok = co < C_out
    coff = co.to(tl.int64) * sgc if OFF64 else co * sgc
    ci = pid_ci * BLOCK_CI + tl.arange(0, BLOCK_CI)
    ci_ok = ci < C_in
    if OFF64:
        cxo = ci.to(tl.int64) * sxc
        cdo = ci.to(tl.int64) * sdc
    else:
        cxo = ci * sxc
        cdo = ci * sdc
    q = tl.arange(0, LANES)
    lane_ok = q < QH * QW
    acc_pw = tl.zeros((BLOCK_CO, BLOCK_CI), dtype=tl.float32)
    acc_m = tl.zeros((BLOCK_CO,), dtype=tl.float32)

    t_begin = grp * tiles_per_group
    for tt in range(t_begin, tl.minimum(t_begin + tiles_per_group, total_tiles)):
        n, tile, ih, iw, q_ok = _tile_lanes(tt, tiles_per_img, tiles_w, q, lane_ok, H, W, QH, QW)
        gy_n = gy_ptr + n.to(tl.int64) * sgn
        dt = _dt_block(gy_n, dwt_ptr, ih, iw, q_ok, co, co_ok, coff, sgh, sgw, C_out, Ho, Wo, PH, PW, kh_n,
                       KW, SH, SW, DH, DW, OFF64, LANES, BLOCK_CO)
        # the weights stay in L1/L2 across the tiles; reloaded per tile so they do not hold registers over the
        # dt generation
        wt = tl.load(pw_ptr + co[:, None] * C_in + ci[None, :], mask=co_ok[:, None] & ci_ok[None, :], other=0.0)
        if UPCAST:
            dtc = dt
            wt = wt.to(tl.float32)
        else:
            # dt rounded to the weight dtype for the tensor cores, as the unfused path stores it (both GEMMs)
            dtc = dt.to(wt.dtype)
        dxv = tl.dot(dtc, wt, input_precision=INPUT_PRECISION)
        if OFF64:
            dx_off = ih.to(tl.int64) * sdh + iw.to(tl.int64) * sdw
        else:
            dx_off = ih * sdh + iw * sdw
        tl.store(dx_ptr + n.to(tl.int64) * sdn + dx_off[:, None] + cdo[None, :], dxv.to(dx_ptr.dtype.element_ty),
                 mask=q_ok[:, None] & ci_ok[None, :])
        if NEED_DPW:
            if OFF64:
                x_off = ih.to(tl.int64) * sxh + iw.to(tl.int64) * sxw
            else:
                x_off = ih * sxh + iw * sxw
            xb = tl.load(x_ptr + n.to(tl.int64) * sxn + x_off[:, None] + cxo[None, :],
                         mask=q_ok[:, None] & ci_ok[None, :], other=0.0)
            if UPCAST:
                xb = xb.to(tl.float32)
            acc_pw = tl.dot(tl.trans(dtc), xb, acc_pw, input_precision=INPUT_PRECISION)
        if NEED_DMID:
            acc_m += tl.sum(dt, axis=0)

    _store_partials(dpw_part, dmid_part, grp.to(tl.int64), co, co_ok, ci, ci_ok, C_in, C_out, pid_ci, acc_pw, acc_m,
                    NEED_DPW, NEED_DMID)


@triton.jit
def bsconv_bwd_w_kernel(
    gy_ptr, x_ptr, pw_ptr, dwt_ptr, mid_ptr,
    dpw_part, ddw_part, dbias_part, dmid_part, t_scratch,
    C_in, C_out, H, W, Ho, Wo,
    sgn, sgc, sgh, sgw,
    sxn, sxc, sxh, sxw,
    utiles_w, utiles_per_img, total_tiles, tiles_per_group, ci_blocks, ci_start, dpw_cols,
    stq, stc,
    PH, PW, kh_n,
    KW: tl.constexpr, TAPS: tl.constexpr,
    SH: tl.constexpr, SW: tl.constexpr, DH: tl.constexpr, DW: tl.constexpr,
    QH: tl.constexpr, QW: tl.constexpr, LANES: tl.constexpr,
    BLOCK_CO: tl.constexpr, BLOCK_CI: tl.constexpr, BLOCK_K: tl.constexpr,
    NEED_DPW: tl.constexpr, NEED_DDW: tl.constexpr, NEED_DBIAS: tl.constexpr, NEED_DMID: tl.constexpr,
    HAS_MID: tl.constexpr, LEAD: tl.constexpr,
    DDW_REG: tl.constexpr, DDW_KH: tl.constexpr, DDW_R: tl.constexpr, DDW_M: tl.constexpr,
    OFF64: tl.constexpr, UPCAST: tl.constexpr, INPUT_PRECISION: tl.constexpr,
):
    # LEAD programs also do the per-channel reductions: d_dw needs the full pointwise conv, which only they
    # recompute. A compile-time flag, so the other launch carries none of that code.
    # dpw_part of this launch holds only its own C_in columns [ci_start, ci_start + dpw_cols).
    pid_c = tl.program_id(0)
    grp = tl.program_id(1)
    pid_co = pid_c // ci_blocks
    pid_ci = pid_c % ci_blocks

    co = pid_co * BLOCK_CO + tl.arange(0, BLOCK_CO)
    co_ok = co < C_out
    coff = co.to(tl.int64) * sgc if OFF64 else co * sgc
    ci_loc = pid_ci * BLOCK_CI + tl.arange(0, BLOCK_CI)
    ci_blk = ci_start + ci_loc
    ci_blk_ok = (ci_loc < dpw_cols) & (ci_blk < C_in)
    cxo = ci_blk.to(tl.int64) * sxc if OFF64 else ci_blk * sxc
    q = tl.arange(0, LANES)
    taps = tl.arange(0, TAPS)
    if HAS_MID:
        mb = tl.load(mid_ptr + co, mask=co_ok, other=0.0).to(tl.float32)

    acc_pw = tl.zeros((BLOCK_CO, BLOCK_CI), dtype=tl.float32)
    acc_dw = tl.zeros((TAPS, BLOCK_CO), dtype=tl.float32)
    acc_b = tl.zeros((BLOCK_CO,), dtype=tl.float32)
    acc_m = tl.zeros((BLOCK_CO,), dtype=tl.float32)
    lane_ok = q < QH * QW

    if LEAD:
        # The LEAD sums (d_dw per tap, d_bias) use register accumulators reduced across threads once per program,
        # not per tap and tile: the tile is viewed as (DDW_R, DDW_M, BLOCK_CO) lanes x channels with DDW_M x
        # BLOCK_CO spanning the CTA's threads, so each tile's sum over DDW_R stays inside a thread.
        q3 = tl.arange(0, DDW_R)[:, None, None] * DDW_M + tl.arange(0, DDW_M)[None, :, None]
        c3 = tl.arange(0, BLOCK_CO)[None, None, :]
        co3_ok = pid_co * BLOCK_CO + c3 < C_out
        coff3 = (pid_co * BLOCK_CO + c3).to(tl.int64) * sgc if OFF64 else (pid_co * BLOCK_CO + c3) * sgc
        acc_b3 = tl.zeros((DDW_M, BLOCK_CO), dtype=tl.float32)
    if NEED_DDW and LEAD and DDW_REG:
        # one accumulator per tap: all taps unrolled (DDW_KH = KH kernel rows)
        accs = ()
        for k in tl.static_range(DDW_KH * KW):
            accs = accs + (tl.zeros((DDW_M, BLOCK_CO), dtype=tl.float32),)

    t_begin = grp * tiles_per_group
    for tt in range(t_begin, tl.minimum(t_begin + tiles_per_group, total_tiles)):
        n, tile, rr, cc, q_ok = _tile_lanes(tt, utiles_per_img, utiles_w, q, lane_ok, H, W, QH, QW)  # input pixels
        gy_n = gy_ptr + n.to(tl.int64) * sgn
        if OFF64:
            x_off = rr.to(tl.int64) * sxh + cc.to(tl.int64) * sxw
        else:
            x_off = rr * sxh + cc * sxw
        x_n = x_ptr + n.to(tl.int64) * sxn

        if NEED_DDW and LEAD:
            t = tl.zeros((LANES, BLOCK_CO), dtype=tl.float32)
            # the recomputation of t walks C_in in chunks of BLOCK_K
            for ci0 in range(0, C_in, BLOCK_K):
                ci = ci0 + tl.arange(0, BLOCK_K)
                ci_ok = ci < C_in
                cio = ci.to(tl.int64) * sxc if OFF64 else ci * sxc
                xt = tl.load(x_n + x_off[:, None] + cio[None, :], mask=q_ok[:, None] & ci_ok[None, :], other=0.0)
                wt = tl.load(pw_ptr + co[None, :] * C_in + ci[:, None], mask=ci_ok[:, None] & co_ok[None, :],
                             other=0.0)
                if UPCAST:
                    xt = xt.to(tl.float32)
                    wt = wt.to(tl.float32)
                t = tl.dot(xt, wt, t, input_precision=INPUT_PRECISION)
            if HAS_MID:
                t += tl.where(q_ok[:, None], mb[None, :], 0.0)
            # t comes out of tl.dot in the MMA layout; the d_dw products below want the layout of the dy loads.
            # Left alone the compiler converts every tap's dy to the MMA layout (smem round trip per tap). Bounced
            # once per tile through this program's scratch slot (L1/L2-resident, laid out like dy: stq/stc), t is
            # loaded straight in the dy layout. The barriers order the slot's reuse between tiles.
            t_slot = t_scratch + (pid_c.to(tl.int64) * tl.num_programs(1) + grp) * (LANES * BLOCK_CO)
            t_off = q[:, None] * stq + tl.arange(0, BLOCK_CO)[None, :] * stc
            tl.debug_barrier()
            tl.store(t_slot + t_off, t)
            tl.debug_barrier()
            if DDW_REG:
                t3 = tl.load(t_slot + q3 * stq + c3 * stc)
                rr3 = (tile // utiles_w) * QH + q3 // QW
                cc3 = (tile % utiles_w) * QW + q3 % QW
                q3_ok = (q3 < QH * QW) & (rr3 < H) & (cc3 < W) & co3_ok
                new = ()
                for kh in tl.static_range(DDW_KH):
                    roff3, okh3 = _tap_offset(rr3, kh, PH, DH, SH, Ho, sgh, OFF64)
                    for kw in tl.static_range(KW):
                        cof3, okw3 = _tap_offset(cc3, kw, PW, DW, SW, Wo, sgw, OFF64)
                        dy3 = tl.load(gy_n + roff3 + cof3 + coff3, mask=q3_ok & okh3 & okw3, other=0.0)
                        new = new + (accs[kh * KW + kw] + tl.sum(t3 * dy3.to(tl.float32), axis=0),)
                accs = new
            else:
                t = tl.load(t_slot + t_off)
            if not DDW_REG:
                # d_dw[co, tap] = sum_q t[q, co] dy[p(q, tap), co]: the dt loop below, with t as the weight
                for kh in range(kh_n):
                    roff, okh = _tap_offset(rr, kh, PH, DH, SH, Ho, sgh, OFF64)
                    rok = q_ok & okh
                    for kw in tl.static_range(KW):
                        cof, okw = _tap_offset(cc, kw, PW, DW, SW, Wo, sgw, OFF64)
                        dy = tl.load(gy_n + (roff + cof)[:, None] + coff[None, :],
                                     mask=(rok & okw)[:, None] & co_ok[None, :], other=0.0)
                        contrib = tl.sum(t * dy.to(tl.float32), axis=0)
                        acc_dw += tl.where(taps[:, None] == kh * KW + kw, contrib[None, :], 0.0)

        if NEED_DPW or NEED_DMID:
            dt = _dt_block(gy_n, dwt_ptr, rr, cc, q_ok, co, co_ok, coff, sgh, sgw, C_out, Ho, Wo, PH, PW, kh_n,
                           KW, SH, SW, DH, DW, OFF64, LANES, BLOCK_CO)
            if NEED_DPW:
                xb = tl.load(x_n + x_off[:, None] + cxo[None, :], mask=q_ok[:, None] & ci_blk_ok[None, :],
                             other=0.0)
                if UPCAST:
                    acc_pw = tl.dot(tl.trans(dt), xb.to(tl.float32), acc_pw, input_precision=INPUT_PRECISION)
                else:
                    acc_pw = tl.dot(tl.trans(dt.to(xb.dtype)), xb, acc_pw, input_precision=INPUT_PRECISION)
            if NEED_DMID:
                acc_m += tl.sum(dt, axis=0)
        if NEED_DBIAS and LEAD:
            # the same lanes read as output pixels: the tile grid spans max(input, output) so each is seen once
            rp = (tile // utiles_w) * QH + q3 // QW
            cp = (tile % utiles_w) * QW + q3 % QW
            p_ok = (q3 < QH * QW) & (rp < Ho) & (cp < Wo) & co3_ok
            if OFF64:
                rp = rp.to(tl.int64)
                cp = cp.to(tl.int64)
            dyp = tl.load(gy_n + rp * sgh + cp * sgw + coff3, mask=p_ok, other=0.0)
            acc_b3 += tl.sum(dyp.to(tl.float32), axis=0)

    if NEED_DBIAS and LEAD:
        acc_b = tl.sum(acc_b3, axis=0)
    if NEED_DDW and LEAD and DDW_REG:
        for k in tl.static_range(DDW_KH * KW):
            acc_dw += tl.where(taps[:, None] == k, tl.sum(accs[k], axis=0)[None, :], 0.0)
    g64 = grp.to(tl.int64)
    _store_partials(dpw_part, dmid_part, g64, co, co_ok, ci_loc, ci_blk_ok, dpw_cols, C_out, pid_ci, acc_pw, acc_m,
                    NEED_DPW, NEED_DMID)
    if LEAD:
        if NEED_DDW:
            tl.store(ddw_part + g64 * C_out * (kh_n * KW) + co[None, :] * (kh_n * KW) + taps[:, None], acc_dw,
                     mask=(taps[:, None] < kh_n * KW) & co_ok[None, :])
        if NEED_DBIAS:
            tl.store(dbias_part + g64 * C_out + co, acc_b, mask=co_ok)
