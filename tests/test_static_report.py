"""The static cost report (bsconv_fused.bench.static): SASS parsing and loop matching on a hand-written listing
(in process), and on one small layer compiled for sm_90 (subprocesses: the kernels cannot be compiled where
tests/conftest.py has turned the Triton interpreter on): deterministic counts, the declared loops found with the
plan's trips, a wrong declaration failing loudly, and the CLI's JSON rows."""
import json
import os
import subprocess
import sys

import pytest

from bsconv_fused.bench.static.counts import LoopMismatch, count_launch
from bsconv_fused.bench.static.sass import SassError, find_loops, klass, parse
from bsconv_fused.triton.launch import Loop

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Two nested loops ([0x20, 0x70] containing [0x30, 0x50]), a trap self-loop after EXIT, one never-run filler.
LISTING = """
        /*0000*/                   S2R R0, SR_TID.X ;
        /*0010*/                   IMAD R1, R0, 0x4, RZ ;
        /*0020*/                   LDG.E.128 R4, desc[UR4][R2.64] ;
        /*0030*/                   FFMA R8, R4, R5, R8 ;
        /*0040*/                   SHFL.IDX PT, R9, R8, 0x1, 0x1f ;
        /*0050*/               @P0 BRA 0x30 ;
        /*0060*/              @!PT LDS RZ, [RZ] ;
        /*0070*/               @P1 BRA 0x20 ;
        /*0080*/                   STG.E desc[UR4][R2.64], R8 ;
        /*0090*/                   EXIT ;
        /*00a0*/                   BRA 0xa0;
"""


def test_listing_loops_and_dynamic_counts():
    ins = parse(LISTING)
    assert [str(lp) for lp in find_loops(ins)] == ["[0x0020, 0x0070]", "[0x0030, 0x0050]"]
    loops, c = count_launch("toy", LISTING, (Loop("outer", 4), Loop("inner", 3)))
    assert [(lp.name, lp.depth) for lp in loops] == [("outer", 0), ("inner", 1)]
    assert c.by_class["fp32"] == 12 and c.by_class["shfl"] == 12  # inside both loops: 4 x 3
    assert c.by_class["ldg"] == 4 and c.by_class["stg"] == 1
    assert c.by_class["branch"] == 12 + 4 + 2  # the inner back edge 12x, the outer 4x, EXIT and the trap loop
    assert c.issued == 2 + 4 + 12 * 3 + 4 + 4 + 1 + 2
    assert c.lsu_wavefronts == 4 * 4 + 1  # LDG.128: 512 B = 4 wavefronts; the @!PT LDS never runs
    assert c.ldg_bytes == 4 * 512 and c.l2_bytes == 128


def test_listing_mismatch_fails_loudly():
    with pytest.raises(LoopMismatch, match=r"toy: the launch declares 1 runtime loops \['outer\(4\)'\] but the "
                                           r"compiled SASS has 2"):
        count_launch("toy", LISTING, (Loop("outer", 4),))


def test_listing_optional_loop_may_be_missing():
    loops, c = count_launch("toy", LISTING, (Loop("group", 1, optional=True), Loop("outer", 4), Loop("inner", 3)))
    assert [lp.name for lp in loops] == ["outer", "inner"] and c.by_class["fp32"] == 12
    with pytest.raises(LoopMismatch, match="declares 3 runtime loops"):  # a one-trip loop not marked optional
        count_launch("toy", LISTING, (Loop("group", 1), Loop("outer", 4), Loop("inner", 3)))
    with pytest.raises(LoopMismatch, match="cannot tell which optional loops"):
        count_launch("toy", LISTING, (Loop("a", 2, optional=True), Loop("b", 3, optional=True), Loop("c", 5)))


def test_listing_overlapping_loops_rejected():
    bad = LISTING.replace("@P1 BRA 0x20", "@P1 BRA 0x40")  # [0x40, 0x70] overlaps [0x30, 0x50]
    with pytest.raises(SassError, match="overlap"):
        find_loops(parse(bad))
    with pytest.raises(SassError, match="no SASS"):
        parse("not a listing")


def test_classes():
    ins = {i.op + i.mods: i for i in parse(LISTING.replace("FFMA R8", "HADD2.F32 R8"))}
    assert klass(ins["HADD2.F32"]) == "upcast"
    assert klass(ins["SHFL.IDX"]) == "shfl"


def _python(code, cache_dir):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env["TRITON_CACHE_DIR"] = str(cache_dir)
    r = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r.stdout


# One layer with few channels (64x24x56x56 -> 32, 3x3, channels_last, fp16; meta tensors, so N costs nothing): its
# forward and backward launches predicted for sm_90. N=64 gives the weight-gradient kernel several tiles per group.
SMALL_LAYER = r"""
import dataclasses, json, torch
from bsconv_fused.bench.static import LoopMismatch, predict_launches
from bsconv_fused.triton.launch import Loop, backward_launches, forward_launches
x = torch.empty(64, 24, 56, 56, dtype=torch.float16, device="meta").to(memory_format=torch.channels_last)
pw = torch.empty(32, 24, 1, 1, dtype=torch.float16, device="meta")
dw = torch.empty(32, 1, 3, 3, dtype=torch.float16, device="meta")
b = torch.empty(32, dtype=torch.float16, device="meta")
y, fwd = forward_launches(x, pw, dw, b, None, (1, 1), (1, 1), (1, 1))
# both backward plans, pinned: the split launches (dx, LEAD, d_pw) and the fused dx + d_pw launch
import os
os.environ["BSCONV_FUSED_TRITON_BWD"] = "split"
bwd, _ = backward_launches(torch.empty_like(y), x, pw, dw, None, (1, 1), (1, 1), (1, 1), (True,) * 4 + (False,))
os.environ["BSCONV_FUSED_TRITON_BWD"] = "fused"
fused, _ = backward_launches(torch.empty_like(y), x, pw, dw, None, (1, 1), (1, 1), (1, 1), (True,) * 4 + (False,))
bwd = bwd + [l for l in fused if "LEAD" not in l.meta]
out = [dict(p.as_dict(), declared=[[lp.name, lp.trips, lp.optional] for lp in p.kernel.launch.loops])
       for p in predict_launches(fwd + bwd, "sm_90")]
# two more required loops than the SASS has
bad = dataclasses.replace(fwd[0], loops=(Loop("extra", 2), Loop("extra2", 5)) + fwd[0].loops)
try:
    predict_launches([bad], "sm_90")
    mismatch = None
except LoopMismatch as e:
    mismatch = str(e)
print("RESULT" + json.dumps(dict(kernels=out, mismatch=mismatch)))
"""


@pytest.fixture(scope="module")
def small_layer(tmp_path_factory):
    # two processes, each with an empty Triton cache: both really compile, so equal counts mean determinism
    runs = [_python(SMALL_LAYER, tmp_path_factory.mktemp(f"triton-cache-{i}")) for i in range(2)]
    return [json.loads(r.split("RESULT", 1)[1]) for r in runs]


def test_small_layer_counts_are_deterministic(small_layer):
    first, second = small_layer
    assert [k["counts_per_warp"] for k in first["kernels"]] == [k["counts_per_warp"] for k in second["kernels"]]
    assert [k["times_us"] for k in first["kernels"]] == [k["times_us"] for k in second["kernels"]]


def test_small_layer_declared_loops_found(small_layer):
    kernels = small_layer[0]["kernels"]
    assert [k["kernel"] for k in kernels] == ["bsconv_fwd_staged_kernel", "bsconv_bwd_dx_kernel",
                                              "bsconv_bwd_w_kernel[lead]", "bsconv_bwd_w_kernel[rest]",
                                              "bsconv_bwd_dxw_kernel"]
    for k in kernels:
        assert k["declared"], k["kernel"]  # every kernel of the layer has runtime loops
        # every required loop found with its trips, in order; optional ones (e.g. kw, unrolled on sm_90) may be gone
        matched = [[lp["name"], lp["trips"]] for lp in k["loops"]]
        required = [[n, t] for n, t, optional in k["declared"] if not optional]
        kept = iter(matched)
        assert all(any(m == [n, t] for m in kept) for n, t, _ in k["declared"] if [n, t] in matched), k
        assert all(r in matched for r in required), (required, matched)
        depths = [lp["depth"] for lp in k["loops"]]
        assert depths[0] == 0 and all(d <= i for i, d in enumerate(depths)), depths
        assert k["counts_per_warp"]["issued"] > 0
        assert k["stack_bytes"] == 0  # no spills
        for m in ("H100 SXM", "H200 SXM"):
            t = k["times_us"][m]
            assert k["bound_us"][m] == max(t.values()) > 0 and k["binding"][m] in t
        assert k["times_us"]["H200 SXM"]["dram"] < k["times_us"]["H100 SXM"]["dram"]
    fwd, dx, lead, rest, dxw = kernels
    # the persistent forward: its tiles, then per tile the C_in chunks of the GEMM and the taps (both inside)
    assert [lp["name"] for lp in fwd["loops"]] == ["tiles", "c_in", "taps"] and fwd["loops"][0]["trips"] > 1
    assert [lp["depth"] for lp in fwd["loops"]] == [0, 1, 1]
    assert [lp["name"] for lp in dx["loops"]] == ["co_blocks", "dt_kh"]
    # the weight kernels walk their tiles (several per group at N=64): LEAD recomputes t inside, the other regenerates
    # dt row by row inside
    assert [lp["name"] for lp in lead["loops"]] == ["tiles", "t_ci"] and lead["loops"][0]["trips"] > 1
    assert [lp["name"] for lp in rest["loops"]] == ["tiles", "dt_kh"] and rest["loops"][0]["trips"] > 1
    # the fused launch: its group's tiles, dt row by row inside
    assert [lp["name"] for lp in dxw["loops"]] == ["tiles", "dt_kh"] and dxw["loops"][0]["trips"] > 1
    assert fwd["counts_per_warp"]["tensor_flops"]["wgmma.f16"] > 0  # the pointwise GEMM runs on wgmma


def test_small_layer_mismatch_fails_loudly(small_layer):
    msg = small_layer[0]["mismatch"]
    assert msg is not None
    assert msg.startswith("bsconv_fwd_staged_kernel: the launch declares 5 runtime loops")  # 2 extra + 3
    assert "extra(2)" in msg and "extra2(5)" in msg and "compiled SASS has 3" in msg


ROW_FIELDS = {"layer", "layout", "dtype", "direction", "backend", "kernels", "predicted_us", "predicted_us_h200",
              "binding", "fused_roofline_us", "unfused_roofline_us", "predicted_speedup", "kernel_size", "stride"}


def test_cli_json_and_markdown(tmp_path):
    js, md = tmp_path / "r.json", tmp_path / "r.md"
    code = ("import sys; from bsconv_fused.bench.static.report import main; "
            f"sys.exit(main(['--filter', '32->64@112 channels_last', '--json', {str(js)!r}, '--markdown', "
            f"{str(md)!r}]))")
    _python(code, tmp_path / "cache")
    report = json.loads(js.read_text())
    assert report["header"]["arch"] == "sm_90" and "not measurements" in report["header"]["note"]
    rows = report["rows"]
    assert [(r["layer"], r["layout"], r["direction"]) for r in rows] == [
        ("32->64@112", "channels_last", "forward"), ("32->64@112", "channels_last", "backward")]
    for r in rows:
        assert ROW_FIELDS <= set(r), ROW_FIELDS - set(r)
        assert r["backend"] == "triton" and r["dtype"] == "fp16"
        assert r["predicted_us"] == pytest.approx(sum(k["bound_us"]["H100 SXM"] for k in r["kernels"]), rel=1e-3)
        assert r["predicted_speedup"] == pytest.approx(r["unfused_roofline_us"] / r["predicted_us"], rel=1e-2)
        assert 0 < r["fused_roofline_us"] < r["unfused_roofline_us"]
    text = md.read_text()
    assert "static predictions, not measurements" in text
    assert "| 32->64@112 | fp16 | channels_last | 3 | 1 | forward | triton |" in text


def test_cli_rejects_bad_arguments(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = ROOT
    r = subprocess.run([sys.executable, "-m", "bsconv_fused.bench.static", "--dtypes", "fp8"], env=env, cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "--dtypes must be" in r.stderr
    r = subprocess.run([sys.executable, "-m", "bsconv_fused.bench.static", "--filter", "no-such-layer"], env=env,
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 1 and "matches no layer" in r.stderr


def test_suite_variants_carry_kernel_size_and_stride():
    from bsconv_fused.bench.static.report import suite

    default = suite(["fp16"])
    assert {(c.K, c.stride) for c, _ in default} == {(3, 1)} and len(default) == 18  # 9 layers x 2 layouts
    both = suite(["fp16"], "", ("layers", "variants"))
    assert len(both) == 54 and {(c.K, c.stride) for c, _ in both} == {(3, 1), (5, 1), (3, 2)}
    # the layer name is the same for every variant: the K / s tokens of the filter tell them apart
    picked = suite(["fp16"], "128->128@56 K5 nchw", ("layers", "variants"))
    assert [(c.layer, c.K, c.stride, lay) for c, lay in picked] == [("128->128@56", 5, 1, "nchw")]
    with pytest.raises(ValueError, match="suites must be"):
        suite(["fp16"], "", ("latency",))


def test_cli_variant_rows_carry_kernel_size_and_stride(tmp_path):
    # one strided layer, forward only (the rows' fields and markdown columns, not the kernels, are under test here)
    js, md = tmp_path / "r.json", tmp_path / "r.md"
    code = ("import json; from bsconv_fused.bench.static.report import build_report, to_markdown; "
            "r = build_report('sm_90', ['fp16'], '32->64@112 s2 channels_last', directions=('forward',), "
            "log=lambda s: None, suites=('layers', 'variants')); "
            f"open({str(js)!r}, 'w').write(json.dumps(r)); open({str(md)!r}, 'w').write(to_markdown(r))")
    _python(code, tmp_path / "cache")
    report = json.loads(js.read_text())
    assert report["header"]["suites"] == ["layers", "variants"]
    [row] = report["rows"]
    assert ROW_FIELDS <= set(row)
    assert (row["layer"], row["kernel_size"], row["K"], row["stride"]) == ("32->64@112", 3, 3, 2)
    assert "| 32->64@112 | fp16 | channels_last | 3 | 2 | forward | triton |" in md.read_text()


def test_cli_rejects_bad_suite(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = ROOT
    r = subprocess.run([sys.executable, "-m", "bsconv_fused.bench.static", "--suite", "latency"], env=env, cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "--suite must be" in r.stderr


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the message of a machine without a GPU")
def test_calibrate_needs_a_gpu(capsys):
    from bsconv_fused.bench.static.calibrate import main

    assert main([]) == 2
    assert "needs a CUDA GPU" in capsys.readouterr().err


# The extension's CUDA kernels (bsconv_fused.bench.static.cuda): launch plans from the C++ planners (plan_probe) and
# the compiled sm_90 kernels' registers and runtime loops, attributed to their source loops. nvcc compiles slowly on
# a small machine (minutes per source), so one process compiles into a private cache and a second, with another
# empty cache, compiles the forward again: equal loop inventories mean the analysis is deterministic.
CUDA_LAYER = r"""
import json, sys
from bsconv_fused.bench.suites import LayerCase
from bsconv_fused.bench.static import cuda
case = LayerCase(64, 24, 32, 56, 56, 3, 1, "fp16")
inv = cuda.inventory([(case, "channels_last"), (case, "nchw")], directions=tuple(sys.argv[1].split(",")),
                     log=lambda s: None)
print("RESULT" + json.dumps(inv))
"""


def _cuda_tools_missing():
    from bsconv_fused.bench.static import cuda

    try:
        cuda.nvcc(), cuda.tool("cuobjdump"), cuda.tool("nvdisasm")
    except cuda.ToolMissing as e:
        return str(e)
    return None


needs_cuda_tools = pytest.mark.skipif(_cuda_tools_missing() is not None, reason="needs nvcc, cuobjdump and nvdisasm")


def _cuda_inventory(cache, directions):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env["BSCONV_FUSED_STATIC_CACHE"] = str(cache)
    r = subprocess.run([sys.executable, "-c", CUDA_LAYER, directions], env=env, cwd=ROOT, capture_output=True,
                       text=True, timeout=3600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return json.loads(r.stdout.split("RESULT", 1)[1])


@pytest.fixture(scope="module")
def cuda_inventories(tmp_path_factory):
    full = _cuda_inventory(tmp_path_factory.mktemp("cuda-cache-0"), "forward,backward")
    again = _cuda_inventory(tmp_path_factory.mktemp("cuda-cache-1"), "forward")
    return full, again


@needs_cuda_tools
def test_cuda_inventory_is_deterministic(cuda_inventories):
    full, again = cuda_inventories
    forward = [r for r in full["rows"] if r["direction"] == "forward"]
    assert [r["kernels"] for r in forward] == [r["kernels"] for r in again["rows"]]


@needs_cuda_tools
def test_cuda_inventory_plans_and_loops(cuda_inventories):
    rows = {(r["layout"], r["direction"]): r for r in cuda_inventories[0]["rows"]}
    assert set(rows) == {(lay, d) for lay in ("nchw", "channels_last") for d in ("forward", "backward")}
    for (layout, direction), r in rows.items():
        assert r["backend"] == "cuda" and (r["kernel_size"], r["stride"]) == (3, 1) and "refused" not in r
        names = [k["kernel"] for k in r["kernels"]]
        # C_out = 32 -> channel block 32 for the forward and the depthwise-weight kernel; C_in = 24 -> 32 for dx/dpw
        assert names == (["forward_kernel<fp16,32>"] if direction == "forward" else
                         ["dx_kernel<fp16,32>", "dpw_kernel<fp16,32>", "wgrad_kernel<fp16,32>"]), names
        for k in r["kernels"]:
            assert k["block"] == [256] and k["regs"] > 0 and k["stack_bytes"] == 0
            assert 0 < k["dynamic_shared_bytes"] <= 227 * 1024
            assert k["occupancy"]["H100 SXM"]["ctas_per_sm"] >= 1
            if k["kernel"].startswith("wgrad_kernel"):
                # nvcc lays this kernel's loops out interleaved: the address-range loop model refuses it, loudly
                assert "overlap without nesting" in k["loops_error"] and not k["sass_loops"]
                continue
            assert "loops_error" not in k
            assert k["sass_loops"] and all(lp["source"] != "?" for lp in k["sass_loops"]), k["sass_loops"]
        fwd = r["kernels"][0]
        if direction == "forward":
            p = fwd["plan"]
            assert fwd["ctas"] == p["n_spatial"] * p["n_cob"] and p["n_cob"] == 1
            assert p["n_spatial"] == 64 * p["tiles_h"] * p["tiles_w"]
            texts = {lp["text"] for lp in fwd["sass_loops"]}
            # the pointwise GEMM's C_in chunk loop and the 3x3 stencil's run loop are runtime loops of the kernel
            assert "for (int64_t k0 = 0; k0 < g.C_in; k0 += kKC) {" in texts
            assert "for (int u = lane; u < units; u += 32) {" in texts
            # the stencil is inlined once per kernel width: its loops carry the call site of each switch case
            sites = {lp["call_site"] for lp in fwd["sass_loops"] if lp["text"].startswith("for (int u = lane")}
            assert len(sites) == 6, sites  # depthwise_runs<1, 2, 3, 4, 5, 7>
