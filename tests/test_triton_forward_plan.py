"""The staged Triton forward: its tile plan, its cost model and forward_loses (pure Python), and the persistent
tile loop (several tiles and channel blocks per program) against the float64 reference through the interpreter."""
import pytest
import torch

from bsconv_fused import bsconv_u
from bsconv_fused._shapes import Geometry
from bsconv_fused.triton.plan import (FORWARD_MODEL_MARGIN, STAGED_MAX_TILE_VALUES, cdiv, forward_loses,
                                      plan_forward, predict_staged, unfused_forward_seconds)
from bsconv_fused.testing import Case, check

SUITE = [(32, 64, 112, 3, 1), (64, 128, 56, 3, 1), (128, 128, 28, 3, 1), (256, 256, 28, 3, 1),
         (128, 256, 28, 3, 2), (128, 128, 28, 5, 1), (512, 512, 14, 3, 1), (1024, 1024, 7, 3, 1)]


def _geom(ci, co, h, k, s, n=64):
    return Geometry(n, ci, co, h, h, k, k, (s, s), (k // 2, k // 2), (1, 1))


@pytest.mark.parametrize("layer", SUITE, ids=lambda l: "{}-{}@{}k{}s{}".format(*l))
@pytest.mark.parametrize("channels_last", [True, False], ids=["cl", "nchw"])
def test_staged_plan_fits_registers_and_covers_the_output(layer, channels_last):
    g = _geom(*layer)
    p = plan_forward(g, "", channels_last)
    assert p.variant == "staged"
    # at most 64 fp32 values per thread in the intermediate and in the accumulator (32 for fp32 inputs): no spills
    assert max(p.halo_lanes, p.out_lanes) * p.block_co <= STAGED_MAX_TILE_VALUES[2]
    assert max(p.halo_lanes, p.out_lanes) * p.block_co <= 64 * 32 * p.num_warps
    p32 = plan_forward(g, "", channels_last, 4)
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
            cost = predict_staged(g, plan_forward(g, "", cl), cl)
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
