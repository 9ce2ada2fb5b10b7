"""The staged Triton forward: its tile plan, its cost model and forward_loses (pure Python), and the persistent
tile loop (several tiles and channel blocks per program) against the float64 reference through the interpreter."""
import pytest
import torch

from bsconv_fused import bsconv_u
from bsconv_fused._shapes import Geometry
from bsconv_fused.triton.plan import (FORWARD_MODEL_MARGIN, STAGED_MAX_TILE_VALUES, cdiv, forward_loses,
                                      plan_forward, predict_forward, predict_rows, predict_staged,
                                      unfused_forward_seconds)
from bsconv_fused.testing import Case, check

SUITE = [(32, 64, 112, 3, 1), (64, 128, 56, 3, 1), (128, 128, 28, 3, 1), (256, 256, 28, 3, 1),
         (128, 256, 28, 3, 2), (128, 128, 28, 5, 1), (512, 512, 14, 3, 1), (1024, 1024, 7, 3, 1)]


def _geom(ci, co, h, k, s, n=64):
    return Geometry(n, ci, co, h, h, k, k, (s, s), (k // 2, k // 2), (1, 1))


@pytest.mark.parametrize("layer", SUITE, ids=lambda l: "{}-{}@{}k{}s{}".format(*l))
@pytest.mark.parametrize("channels_last", [True, False], ids=["cl", "nchw"])
def test_staged_plan_fits_registers_and_covers_the_output(layer, channels_last):
    g = _geom(*layer)
    p = plan_forward(g, "staged", channels_last)
    assert p.variant == "staged"
    # at most 64 fp32 values per thread in the intermediate and in the accumulator (32 for fp32 inputs): no spills
    assert max(p.halo_lanes, p.out_lanes) * p.block_co <= STAGED_MAX_TILE_VALUES[2]
    assert max(p.halo_lanes, p.out_lanes) * p.block_co <= 64 * 32 * p.num_warps
    p32 = plan_forward(g, "staged", channels_last, 4)
    assert max(p32.halo_lanes, p32.out_lanes) * p32.block_co <= 32 * 32 * p32.num_warps
    assert p.halo_lanes >= p.halo_h * p.halo_w and p.out_lanes >= p.th * p.tw
    assert p.halo_h == (p.th - 1) * g.stride[0] + g.kh and p.halo_w == (p.tw - 1) * g.stride[1] + g.kw
    assert p.tiles_h * p.th >= g.Ho and p.tiles_w * p.tw >= g.Wo


def test_forward_loses_follows_the_model():
    # CL fp16: memory-bound layers win (static H100 prediction), the 1024-channel 7x7 layer loses (tensor/smem)
    assert forward_loses(_geom(128, 128, 28, 3, 1), torch.float16) is None
    reason = forward_loses(_geom(1024, 1024, 7, 3, 1), torch.float16)
    assert reason is not None and "two-layer" in reason
    for layer in SUITE:
        g = _geom(*layer)
        for cl in (True, False):
            cost = predict_forward(g, plan_forward(g, "", cl), cl)
            # the decision asks the model to win by FORWARD_MODEL_MARGIN (the model reads below the full report)
            wins = cost.full * FORWARD_MODEL_MARGIN <= unfused_forward_seconds(g)
            assert (forward_loses(g, torch.float16, cl) is None) == wins


def test_unfused_roofline_matches_bench_bounds():
    from bsconv_fused.bench import bounds
    from bsconv_fused.bench.suites import LayerCase
    for ci, co, h, k, s in SUITE:
        c = LayerCase(N=64, C_in=ci, C_out=co, H=h, W=h, K=k, stride=s, dtype="fp16")
        want = bounds.bound_seconds(c, "forward", False, 3.0e12, 700e12)
        assert unfused_forward_seconds(_geom(ci, co, h, k, s), torch.float16) == pytest.approx(want, rel=1e-9)


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_staged_persistent_loop(layout, triton_device, monkeypatch):
    # more tiles x channel blocks than programs: every program walks several tiles and reuses its scratch slot
    monkeypatch.setenv("BSCONV_FUSED_TRITON_FWD", "staged")
    case = Case(N=2, C_in=8, C_out=136, H=15, W=16, layout=layout, dtype=torch.float16)
    g = Geometry(case.N, case.C_in, case.C_out, case.H, case.W, 3, 3, (1, 1), (1, 1), (1, 1))
    p = plan_forward(g, "staged", layout == "channels_last")
    tiles = case.N * p.tiles_per_image * cdiv(case.C_out, p.block_co)
    assert tiles > 4 and cdiv(case.C_out, p.block_co) > 1, p  # the interpreter runs 4 programs
    check(case, lambda *a, **k: bsconv_u(*a, **k, backend="triton"), triton_device, backend="triton")


# The whole-rows forward (bsconv_fwd_rows_kernel) with pinned tiles: (case, images per tile, output rows per tile,
# BLOCK_CO, BLOCK_CI). Forward only (requires nothing): the backward kernels are the same for every forward variant.
_FWD_ONLY = (False,) * 5
ROWS_TILES = [
    # several whole images per tile, the last group partial (N=5, 2 per tile); C_in in 3 steps, the last partial;
    # 3 channel blocks, the last partial: 9 tiles over the interpreter's 4 programs (the slot is reused)
    (Case(N=5, C_in=40, C_out=40, H=7, W=7, layout="channels_last", dtype=torch.float16, requires=_FWD_ONLY),
     2, 7, 16, 16),
    # one whole image per tile, stride 2, odd sizes, NCHW fp32
    (Case(N=3, C_in=12, C_out=20, H=9, W=8, stride=(2, 2), layout="nchw", dtype=torch.float32, requires=_FWD_ONLY),
     1, 5, 16, 16),
    # three whole images, padding 0 at stride 2: the in-image rows reach past the rows the taps read
    (Case(N=4, C_in=8, C_out=16, H=8, W=8, stride=(2, 2), padding=(0, 0), bias=False, layout="sliced",
          dtype=torch.float32, requires=_FWD_ONLY), 3, 3, 16, 16),
    # padding wider than K//2 (the output is larger than the input), whole images, bf16
    (Case(N=2, C_in=6, C_out=18, H=5, W=6, padding=(2, 2), layout="channels_last", dtype=torch.bfloat16,
          requires=_FWD_ONLY), 2, 7, 16, 16),
    # bands of 2 rows, 5x5 kernel, mid_bias: the band's halo rows outside the image come out 0
    (Case(N=2, C_in=10, C_out=24, H=11, W=6, k=(5, 5), padding=(2, 2), layout="sliced", dtype=torch.bfloat16,
          requires=_FWD_ONLY), 1, 2, 16, 16),
    # bands of 3 rows, rectangular dilated kernel with asymmetric padding, fp16 NCHW, no biases
    (Case(N=2, C_in=3, C_out=9, H=10, W=7, k=(3, 2), padding=(0, 3), dilation=(2, 1), bias=False, mid=False,
          layout="nchw", dtype=torch.float16, requires=_FWD_ONLY), 1, 3, 16, 16),
]


@pytest.mark.parametrize("case,imgs,rows,block_co,block_ci", ROWS_TILES, ids=lambda v: str(v) if isinstance(v, Case)
                         else None)
def test_rows_kernel_tiles(case, imgs, rows, block_co, block_ci, triton_device, monkeypatch):
    from bsconv_fused.triton import launch, plan

    g = Geometry(case.N, case.C_in, case.C_out, case.H, case.W, *case.k, case.stride, case.padding, case.dilation)
    p = plan.rows_plan(g, imgs, rows, block_co, block_ci)
    assert (p.rows == g.Ho) == (rows >= g.Ho)
    monkeypatch.setattr(launch, "plan_forward", lambda *a, **k: p)
    y, launches = launch.forward_launches(*(torch.empty(s, dtype=case.dtype) for s in (
        (case.N, case.C_in, case.H, case.W), (case.C_out, case.C_in), (case.C_out, 1, *case.k))), None, None,
        case.stride, case.padding, case.dilation)
    assert [lp.kernel.__name__ for lp in launches] == ["bsconv_fwd_rows_kernel"]
    check(case, lambda *a, **k: bsconv_u(*a, **k, backend="triton"), triton_device, backend="triton")


def test_rows_plan_packs_small_maps_into_whole_images():
    # 7x7: five whole images in 256 GEMM lanes (the staged kernel: a 9x9 halo in 128 lanes per 49 outputs);
    # 14x14: one image in 256 lanes; 28x28: bands of full-width rows
    p = plan_forward(_geom(1024, 1024, 7, 3, 1), "rows")
    assert (p.imgs, p.rows, p.gemm_rows, p.halo_lanes) == (5, 7, 7, 256)
    p = plan_forward(_geom(512, 512, 14, 3, 1), "rows")
    assert (p.imgs, p.rows, p.halo_lanes) == (1, 14, 256)
    p = plan_forward(_geom(256, 256, 28, 3, 1), "rows")
    assert p.imgs == 1 and p.rows < 28 and p.gemm_rows == p.rows + 2 and p.halo_lanes >= p.gemm_rows * 28


@pytest.mark.parametrize("layer", SUITE, ids=lambda l: "{}-{}@{}k{}s{}".format(*l))
@pytest.mark.parametrize("channels_last", [True, False], ids=["cl", "nchw"])
def test_default_plan_is_the_cheaper_variant_by_the_model(layer, channels_last):
    # issue 7 item 4: the variant is chosen by predicted cost (plan.predict_forward), not by hand weights
    g = _geom(*layer)
    p = plan_forward(g, "", channels_last)
    staged = predict_staged(g, plan_forward(g, "staged", channels_last), channels_last).full
    try:
        rows = predict_rows(g, plan_forward(g, "rows", channels_last), channels_last).full
    except ValueError as e:  # wide maps: one output row's input rows exceed the rows kernel's GEMM tile
        assert "rows kernel's GEMM tile" in str(e)
        assert p.variant == "staged"
        return
    assert p.variant == ("rows" if rows < staged else "staged")
    assert predict_forward(g, p, channels_last).full == min(rows, staged)
    if p.variant == "rows":  # register budget of the rows kernel's t tile (tests/test_triton_aot.py: no spills)
        assert p.halo_lanes * p.block_co <= (32768 if channels_last else 16384)
        assert channels_last or p.imgs == 1  # NCHW: one image per tile (registers)
        assert p.halo_lanes >= p.imgs * p.gemm_rows * g.W and p.out_chunk * p.block_co <= 16384


def test_rows_model_wins_on_small_deep_maps():
    # static prediction (H100, fp16, channels_last): the whole-image GEMM beats the staged halo on 7x7 and 14x14
    for layer in [(512, 512, 14, 3, 1), (1024, 1024, 7, 3, 1)]:
        assert plan_forward(_geom(*layer), "", True).variant == "rows"


def test_rows_plan_fits_each_architecture():
    # the 256 x 128 tile fits sm_90's registers only (sm_80's mma.sync holds operand fragments in registers): the
    # launcher plans for its device's architecture, and so do the AOT compile and the static report
    g = _geom(1024, 1024, 7, 3, 1)
    assert plan_forward(g, "rows", True, 2, 90).halo_lanes * plan_forward(g, "rows", True, 2, 90).block_co == 32768
    for arch in (80, 86, 89):
        p = plan_forward(g, "rows", True, 2, arch)
        assert p.halo_lanes * p.block_co <= 16384
    for cl, size in ((False, 2), (True, 4), (False, 4)):
        p = plan_forward(g, "rows", cl, size, 90)
        assert p.halo_lanes * p.block_co <= (8192 if (cl, size) == (False, 4) else 16384)
        p80 = plan_forward(g, "rows", cl, size, 80)
        assert p80.halo_lanes * p80.block_co <= (16384 if cl else 8192)
