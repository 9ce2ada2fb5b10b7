"""The backward plan and its cost model (bsconv_fused/triton/plan.py): pure Python, no kernels run."""
import pytest

from bsconv_fused._shapes import Geometry
from bsconv_fused.triton.plan import (BWD_WARPS, FUSED_ACC_VALUES, FUSED_MAX_CO, TAP_VALUES_CL, TAP_VALUES_NCHW,
                                      backward_loses, plan_backward, predict_backward, predict_plan,
                                      unfused_backward_roofline, weight_grad_groups)

SUITE = [(32, 64, 112, 3, 1), (64, 128, 56, 3, 1), (128, 128, 28, 3, 1), (256, 256, 28, 3, 1),
         (128, 256, 28, 3, 2), (128, 128, 28, 5, 1), (512, 512, 14, 3, 1), (1024, 1024, 7, 3, 1)]
ODD = [(3, 17, 9, 31, (2, 7), (1, 2), (0, 3), (2, 1)), (70, 40, 5, 6, (3, 3), (1, 1), (1, 1), (1, 1)),
       (17, 9, 1, 12, (1, 3), (1, 1), (0, 1), (1, 1)), (6, 18, 7, 9, (7, 7), (3, 3), (5, 5), (1, 1))]


def geometries():
    for ci, co, h, k, s in SUITE:
        yield Geometry(64, ci, co, h, h, k, k, (s, s), (k // 2, k // 2), (1, 1))
    for ci, co, h, w, k, s, p, d in ODD:
        yield Geometry(2, ci, co, h, w, k[0], k[1], s, p, d)


@pytest.mark.parametrize("g", list(geometries()), ids=str)
@pytest.mark.parametrize("channels_fast", [True, False])
@pytest.mark.parametrize("itemsize", [2, 4])
def test_plan_backward_invariants(g, channels_fast, itemsize):
    p = plan_backward(g, channels_fast, itemsize)
    pow2 = lambda v: v >= 16 and v & (v - 1) == 0  # noqa: E731 (tl.dot: power-of-two dims >= 16)
    assert all(pow2(v) for v in (p.lanes, p.wlanes, p.llanes, p.block_co, p.block_ci, p.block_co_w, p.block_ci_w, p.block_k))
    # tiles cover the input (dx) and max(input, output) (weight kernels) with lanes to spare
    assert p.qh * p.qw <= p.lanes and p.tiles_h * p.qh >= g.H and p.tiles_w * p.qw >= g.W
    assert p.wqh * p.wqw <= p.wlanes
    assert p.utiles_h * p.wqh >= max(g.H, g.Ho) and p.utiles_w * p.wqw >= max(g.W, g.Wo)
    # the unrolled kw taps of one kernel row stay within the register budget (16 lanes is the floor)
    budget = TAP_VALUES_CL if channels_fast else TAP_VALUES_NCHW
    for lanes, bco in ((p.lanes, p.block_co), (p.wlanes, p.block_co_w)):
        assert lanes == 16 or g.kw * lanes * bco <= budget * 32 * BWD_WARPS
    assert p.lqh * p.lqw <= p.llanes and p.ltiles_h * p.lqh >= max(g.H, g.Ho) and p.ltiles_w * p.lqw >= max(g.W, g.Wo)
    # dt is generated once per C_in block of up to 256 channels (dx and d_pw; 128 for NCHW d_pw)
    assert p.block_ci >= min(g.C_in, 256) and p.block_ci_w >= min(g.C_in, 256 if channels_fast else 128)
    f = plan_backward(g, channels_fast, itemsize, "fused")
    if g.C_out > FUSED_MAX_CO:
        assert not f.fused and f == p  # falls back to the split plan
        return
    # fused: one block spans C_out (dx complete in a program), the d_pw accumulator stays in its register budget,
    # the tiles cover the input, the kw taps of a row stay within the tap budget
    assert f.fused and pow2(f.block_co_f) and pow2(f.block_ci_f) and pow2(f.flanes)
    assert f.block_co_f >= g.C_out and f.block_co_f * f.block_ci_f <= FUSED_ACC_VALUES * (1 if itemsize == 2 else 0.5)
    assert f.fqh * f.fqw <= f.flanes and f.ftiles_h * f.fqh >= g.H and f.ftiles_w * f.fqw >= g.W
    assert f.flanes == 16 or g.kw * f.flanes * f.block_co_f <= budget * 32 * BWD_WARPS
    assert plan_backward(g, channels_fast, itemsize, "split") == p or p.fused


def test_weight_groups_per_launch():
    g = Geometry(64, 1024, 1024, 7, 7, 3, 3, (1, 1), (1, 1), (1, 1))
    p = plan_backward(g)
    tiles = 64 * p.ltiles_h * p.ltiles_w
    # the LEAD launch has only C_out/64 = 16 programs per group: it gets its own, larger group count
    lead = weight_grad_groups(g, tiles, 16, 0)
    rest = weight_grad_groups(g, tiles, 16 * 4, 1024)
    assert lead * 16 >= 4 * 132 and lead > rest
    # never more groups than tiles, and the partial buffer stays under 64 MiB
    assert lead <= tiles and weight_grad_groups(g, 3, 1, 0) == 3
    assert rest * 1024 * 1024 * 4 <= 64 << 20


def test_backward_loses_both_ways():
    deep = Geometry(64, 512, 512, 14, 14, 3, 3, (1, 1), (1, 1), (1, 1))
    reason = backward_loses(deep, "fp16", channels_last=True)
    assert isinstance(reason, str) and "predicted" in reason and "unfused roofline" in reason
    pointwise_only = Geometry(64, 128, 128, 28, 28, 1, 1, (1, 1), (0, 0), (1, 1))
    assert backward_loses(pointwise_only, "fp16", channels_last=True) is None
    # the fused dx + d_pw launch: 32->64@112 channels_last is predicted faster than the unfused roofline (the SASS
    # report agrees: 204.5 vs 239.8 us), its NCHW twin is not
    wide = Geometry(64, 32, 64, 112, 112, 3, 3, (1, 1), (1, 1), (1, 1))
    assert backward_loses(wide, "fp16", channels_last=True) is None
    assert backward_loses(wide, "fp16", channels_last=False) is not None


def test_cost_model_is_consistent():
    g = Geometry(8, 64, 128, 56, 56, 3, 3, (1, 1), (1, 1), (1, 1))
    g2 = Geometry(16, 64, 128, 56, 56, 3, 3, (1, 1), (1, 1), (1, 1))
    t1, t2 = sum(predict_backward(g, "fp16", True).values()), sum(predict_backward(g2, "fp16", True).values())
    split = lambda g: sum(predict_plan(g, plan_backward(g, True, 2, "split"), 2, True).values())  # noqa: E731
    assert split(g2) == pytest.approx(2 * split(g), rel=0.02)  # linear in the batch
    # the fused launch's d_pw partials (groups x C_out x C_in fp32) do not grow with the batch
    assert 1.5 * t1 < t2 <= 2.02 * t1
    # NCHW costs more than channels_last (scalar dy loads); fp32 moves twice the bytes of fp16
    assert sum(predict_backward(g, "fp16", False).values()) > t1
    assert unfused_backward_roofline(g, "fp32") > unfused_backward_roofline(g, "fp16")
    with pytest.raises(ValueError, match="dtype"):
        predict_backward(g, "int8")


@pytest.mark.parametrize("g", list(geometries()), ids=str)
@pytest.mark.parametrize("channels_fast", [True, False])
def test_backward_plan_follows_the_cost_model(g, channels_fast):
    # the plan runs the fused dx + d_pw launch exactly where the model predicts it cheaper than the split launches
    split, fused = (plan_backward(g, channels_fast, 2, v) for v in ("split", "fused"))
    cost = lambda p: sum(predict_plan(g, p, 2, channels_fast).values())  # noqa: E731
    auto = plan_backward(g, channels_fast, 2)
    assert auto == (fused if fused.fused and cost(fused) < cost(split) else split)
    assert set(predict_backward(g, "fp16", channels_fast)) == ({"dxw", "w_lead"} if auto.fused else
                                                               {"dx", "w_lead", "w_rest"})


def test_fused_backward_chosen_where_it_wins():
    # the layers up to 128 output channels at large maps (dt generated once instead of twice) fuse; the deep ones
    # cannot (C_out > 128); the fused plan's prediction is below the split one there
    g = Geometry(64, 32, 64, 112, 112, 3, 3, (1, 1), (1, 1), (1, 1))
    assert plan_backward(g, True).fused and plan_backward(g, False).fused
    deep = Geometry(64, 512, 512, 14, 14, 3, 3, (1, 1), (1, 1), (1, 1))
    assert not plan_backward(deep, True).fused
    with pytest.raises(ValueError, match="variant"):
        plan_backward(g, True, 2, "both")
