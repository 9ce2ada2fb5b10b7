"""The benchmark machinery on the CPU: bound formulas against docs/performance.md, suite construction, the
wrong-contender detection, the report writers, the traffic counter and the main job in --quick mode."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from bsconv_fused.bench import bounds, report, suites
from bsconv_fused.bench.checks import TOLERANCE, is_wrong, rel_error
from bsconv_fused.bench.contenders import Contender, contenders, two_layer
from bsconv_fused.bench.layers import run_case
from bsconv_fused.bench.results import Row, RunInfo
from bsconv_fused.bench.suites import LayerCase

ROOT = Path(__file__).resolve().parents[1]
H100_BW, H100_FP16 = 3.35e12, 989e12  # spec-sheet figures the performance.md table was computed with

# performance.md, "Roofline lower bounds, H100, N=64, K=3, stride 1, fp16": unfused fwd, unfused fwd+bwd per layer.
UNFUSED = [(107.4, 322.1), (53.7, 161.1), (61.4, 184.1), (26.9, 80.6), (30.7, 92.1), (13.5, 40.5), (15.5, 46.5),
           (7.2, 21.5), (10.5, 31.5)]
# Fused forward of the memory-bound layers (the deeper ones carry a tile halo factor there, see bounds.py).
FUSED_FWD = [46.0, 23.0, 30.7, 11.5, 15.4, 5.8]
FUSED_FWD_BWD = [138.0, 69.0, 92.1]


# ------------------------------------------------------------------------------------------------------ bounds
@pytest.mark.parametrize("i", range(9))
def test_unfused_bounds_match_performance_md(i):
    c = suites.table_cases(64, 3, 1, "fp16")[i]
    fwd = bounds.bound_seconds(c, "forward", False, H100_BW, H100_FP16) * 1e6
    both = bounds.bound_seconds(c, "forward+backward", False, H100_BW, H100_FP16) * 1e6
    assert fwd == pytest.approx(UNFUSED[i][0], abs=0.051)
    assert both == pytest.approx(UNFUSED[i][1], abs=0.051)


def test_fused_bounds_match_performance_md_where_memory_bound():
    cases = suites.table_cases(64, 3, 1, "fp16")
    for c, want in zip(cases, FUSED_FWD):
        assert bounds.bound_seconds(c, "forward", True, H100_BW, H100_FP16) * 1e6 == pytest.approx(want, abs=0.051)
    for c, want in zip(cases, FUSED_FWD_BWD):
        assert bounds.bound_seconds(c, "forward+backward", True, H100_BW) * 1e6 == pytest.approx(want, abs=0.051)


def test_byte_model_is_performance_md_at_stride_1_and_shrinks_y_at_stride_2():
    c = LayerCase(2, 8, 16, 10, 10, 3, 1, "fp32")
    n_x, n_t = 2 * 8 * 100, 2 * 16 * 100
    w_fwd = 16 * 8 + 16 * 9 + 16
    assert bounds.model_bytes(c, "forward", True) == 4 * (n_x + n_t + w_fwd)
    assert bounds.model_bytes(c, "forward", False) == 4 * (n_x + 3 * n_t + w_fwd)
    assert bounds.model_bytes(c, "backward", False) == 4 * (2 * n_x + 6 * n_t + 2 * w_fwd)
    s2 = c.with_(stride=2)
    n_y = 2 * 16 * 5 * 5
    assert (s2.Ho, s2.Wo) == (5, 5)
    assert bounds.model_bytes(s2, "forward", True) == 4 * (n_x + n_y + w_fwd)
    assert bounds.gemm_flops(c) == 2 * 2 * 100 * 8 * 16


def test_bounds_reject_bad_arguments():
    c = LayerCase(1, 4, 4, 4, 4)
    with pytest.raises(ValueError, match="direction"):
        bounds.kernels(c, "sideways", True)
    with pytest.raises(ValueError, match="bandwidth"):
        bounds.bound_seconds(c, "forward", True, 0.0)
    with pytest.raises(ValueError, match="flops_per_s"):
        bounds.bound_seconds(c, "forward", True, 1e9, -1.0)


def test_fusion_ceiling():
    assert bounds.fusion_ceiling(128, 128) == pytest.approx(2.0)
    assert bounds.fusion_ceiling(32, 64) == pytest.approx(7 / 3)


# ------------------------------------------------------------------------------------------------------ suites
def test_gpu_suites_follow_performance_md():
    full = suites.gpu_layer_suites(["fp16", "bf16", "fp32"], quick=False)
    assert len(full["layers"]) == 27 and {c.N for c in full["layers"]} == {64}
    assert {(c.C_in, c.C_out, c.H) for c in full["layers"]} == set(suites.TABLE_LAYERS)
    assert {c.N for c in full["latency"]} == {1, 8}
    assert {(c.K, c.stride) for c in full["variants"]} == {(5, 1), (3, 2)}
    assert len(suites.gpu_sweep(["fp16", "bf16", "fp32"])) == 9 * 3 * 2 * 2 * 3
    quick = suites.gpu_layer_suites(["fp16"], quick=True)
    assert sum(len(v) for v in quick.values()) == 2


def test_cpu_and_interpreter_suites_are_small():
    for c in suites.cpu_layer_suites(["fp32"], quick=False)["layers"]:
        assert c.N == 1 and c.H <= 56
    for quick, cap in ((True, 16), (False, 56)):
        for c in suites.interpreter_cases(quick=quick):
            assert c.N == 1 and c.H <= cap
            assert (c.C_in, c.C_out) in {(ci, co) for ci, co, _ in suites.TABLE_LAYERS} or c.K == 5 or c.stride == 2
    assert len(suites.interpreter_cases(quick=True)) == 2


def test_layer_case_validates_and_names():
    c = LayerCase(64, 32, 64, 112, 112, 3, 1, "fp16")
    assert c.name == "32->64@112 N64 K3 s1 fp16" and c.padding == 1 and c.torch_dtype == torch.float16
    with pytest.raises(ValueError, match="dtype"):
        LayerCase(1, 4, 4, 4, 4, dtype="fp8")
    with pytest.raises(ValueError, match="stride"):
        LayerCase(1, 4, 4, 4, 4, stride=0)
    assert suites.filter_cases(suites.table_cases(1), "@56") == suites.table_cases(1)[1:3]


# ------------------------------------------------------------------------------------------- checks, contenders
def test_rel_error_and_tolerances():
    ref = torch.tensor([1.0, -2.0], dtype=torch.float64)
    assert rel_error(torch.tensor([1.0, -2.0]), ref) == 0.0
    assert rel_error(torch.tensor([1.0, -1.0]), ref) == pytest.approx(0.5)
    assert rel_error(torch.tensor([float("nan"), 0.0]), ref) == float("inf")
    assert rel_error(torch.zeros(3), ref) == float("inf")  # shape mismatch
    assert is_wrong(float("nan"), "fp32") and is_wrong(2 * TOLERANCE["fp16"], "fp16")
    assert not is_wrong(TOLERANCE["bf16"] / 2, "bf16")


def _wrong(case, training):
    block = two_layer(case)
    return lambda x, pw, dw, b: block(x, pw, dw, b) * 1.1  # 10% off: far above any dtype's tolerance


def _broken(case, training):
    def fn(x, pw, dw, b):
        raise RuntimeError("kernel exploded")

    return fn


def _wrong_grad(case, training):
    block = two_layer(case)

    class Half(torch.autograd.Function):  # right forward, gradient halved
        @staticmethod
        def forward(ctx, y):
            return y.clone()

        @staticmethod
        def backward(ctx, g):
            return g * 0.5

    return lambda x, pw, dw, b: Half.apply(block(x, pw, dw, b))


def test_wrong_contenders_are_reported_not_timed():
    case = LayerCase(1, 4, 6, 6, 5, 3, 1, "fp32")
    cons = [
        Contender("eager-nchw", "baseline", False, False, lambda c, t: two_layer(c)),
        Contender("liar", "fused", False, True, _wrong),
        Contender("crash", "fused", True, True, _broken),
        Contender("bad-grad", "fused", False, True, _wrong_grad),
        Contender("absent", "fused", False, True, _wrong, unavailable="not built here"),
    ]
    info = RunInfo("cpu", 1e10)
    rows = run_case(case, "t", torch.device("cpu"), cons, suites.DIRECTIONS, info, quick=True)
    by = {(r.contender, r.direction): r for r in rows}
    for d in suites.DIRECTIONS:
        ok = by[("eager-nchw", d)]
        assert ok.status == "ok" and ok.median_us > 0 and ok.max_err < 1e-5 and ok.speedup == pytest.approx(1.0)
        assert ok.bw_frac > 0 and ok.bound_frac > 0
        assert by[("liar", d)].status == "wrong" and by[("liar", d)].median_us is None
        assert by[("liar", d)].max_err == pytest.approx(0.1, rel=1e-3)
        assert by[("crash", d)].status == "error" and "kernel exploded" in by[("crash", d)].note
        assert by[("absent", d)].status == "unavailable" and by[("absent", d)].note == "not built here"
        assert by[("bound-fused", d)].status == "bound" and by[("bound-unfused", d)].median_us > \
            by[("bound-fused", d)].median_us
    assert by[("bad-grad", "forward")].status == "ok"
    assert by[("bad-grad", "backward")].status == "wrong" and by[("bad-grad", "forward+backward")].status == "wrong"


def test_contender_list_on_cpu_has_no_gpu_only_entries():
    cons = contenders(torch.device("cpu"), quick=False)
    names = [c.name for c in cons]
    assert "compile" not in names and "compile-max-autotune" not in names
    assert {"eager-nchw", "eager-cl", "dense"} <= set(names)
    assert all(c.unavailable for c in cons if c.name.startswith("triton"))
    assert [c.name for c in contenders(torch.device("cpu"), quick=True, include=["dense"])] == ["dense"]


def test_compiled_contender_times_backward_alone_despite_donated_buffers():
    """torch.compile's backward refuses retain_graph (donated buffers); the backward row must still be timed."""
    from bsconv_fused.bench.contenders import _compiled

    build, replay = _compiled(None)
    case = LayerCase(1, 4, 8, 5, 5, 3, 1, "fp32")
    cons = [Contender("compile", "baseline", False, False, build, build_replay=replay)]
    rows = run_case(case, "t", torch.device("cpu"), cons, ["backward", "forward+backward"], RunInfo("cpu", 1e10),
                    quick=True)
    got = {r.direction: r for r in rows if r.contender == "compile"}
    assert got["backward"].status == "ok", got["backward"].note
    assert got["forward+backward"].status == "ok" and got["backward"].max_err < 1e-5


def test_dense_contender_matches_reference():
    case = LayerCase(1, 3, 5, 7, 7, 3, 2, "fp64")
    dense = next(c for c in contenders(torch.device("cpu"), quick=True) if c.name == "dense")
    x, pw, dw, b = torch.randn(1, 3, 7, 7, dtype=torch.float64), torch.randn(5, 3, 1, 1, dtype=torch.float64), \
        torch.randn(5, 1, 3, 3, dtype=torch.float64), torch.randn(5, dtype=torch.float64)
    want = F.conv2d(F.conv2d(x, pw), dw, b, 2, 1, 1, 5)
    for training in (False, True):
        torch.testing.assert_close(dense.build(case, training)(x, pw, dw, b), want)


# ------------------------------------------------------------------------------------------------------ reports
def _rows():
    return [
        Row("layers", "a N1", "forward", "fast", "fused", "ok", dtype="fp32", median_us=10.0, p20_us=9.0,
            p80_us=11.0, speedup=2.0, bound_frac=0.5, max_err=1e-7),
        Row("layers", "a N1", "forward", "slow", "baseline", "ok", dtype="fp32", median_us=20.0, p20_us=19.0,
            p80_us=21.0, speedup=1.0, bound_frac=0.25),
        Row("layers", "a N1", "forward", "liar", "baseline", "wrong", dtype="fp32", max_err=0.5),
        Row("layers", "a N1", "forward", "bound-fused", "bound", "bound", median_us=5.0),
    ]


def test_report_writers(tmp_path):
    rows = _rows()
    machine = {"gpu": None, "cpu": "test cpu", "torch": torch.__version__, "date_utc": "2026-01-01T00:00:00Z"}
    report.write_json(tmp_path / "r.json", machine, RunInfo("cpu", 2e9, {"fp32": None}), rows, {"quick": True})
    doc = json.loads((tmp_path / "r.json").read_text())
    assert doc["machine"]["cpu"] == "test cpu" and doc["copy_bandwidth_GBps"] == pytest.approx(2.0)
    assert [r["contender"] for r in doc["rows"]] == ["fast", "slow", "liar", "bound-fused"]
    report.write_csv(tmp_path / "r.csv", machine, rows)
    with (tmp_path / "r.csv").open() as f:
        got = list(csv.DictReader(f))
    assert len(got) == 4 and got[0]["cpu"] == "test cpu" and float(got[0]["median_us"]) == 10.0
    table = report.format_rows(rows)
    assert "fast" in table and "wrong" in table and "9.00-11.0" in table
    (s,) = report.summary(rows)
    assert s["best_fused"] == "fast" and s["best_baseline"] == "slow" and s["speedup"] == pytest.approx(2.0)
    assert s["wrong"] == "liar" and s["fused_bound_us"] == 5.0
    md = report.format_summary(rows, markdown=True)
    assert md.startswith("| suite") and "| 2.00 |" in md


def test_plots_written_or_skipped_with_a_note(tmp_path):
    files, note = report.write_plots(tmp_path, _rows(), "test")
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert files == [] and "matplotlib" in note
    else:
        assert note == "" and len(files) == 1 and files[0].stat().st_size > 0
        assert files[0].name == "layers-forward.png"


# ------------------------------------------------------------------------------------------------------ traffic
interpreting = pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1",
                                  reason="the traffic counter needs TRITON_INTERPRET=1 (set by conftest without a GPU)")


def test_traffic_counter_refuses_without_interpreter(monkeypatch):
    from bsconv_fused.bench.traffic import count_traffic

    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        with count_traffic():
            pass


@interpreting
def test_traffic_counter_counts_masked_rereads_and_dots():
    import triton
    import triton.language as tl

    from bsconv_fused.bench.traffic import count_traffic

    @triton.jit
    def twice(src, dst, n, BLOCK: tl.constexpr):
        offs = tl.arange(0, BLOCK)
        m = offs < n
        a = tl.load(src + offs, mask=m, other=0.0)
        b = tl.load(src + offs, mask=m, other=0.0)  # the same bytes again: requested, not unique
        tl.store(dst + offs, a + b, mask=m)

    @triton.jit
    def mm(a_ptr, b_ptr, c_ptr, M: tl.constexpr, N: tl.constexpr, K: tl.constexpr):
        rm, rn, rk = tl.arange(0, M), tl.arange(0, N), tl.arange(0, K)
        a = tl.load(a_ptr + rm[:, None] * K + rk[None, :])
        b = tl.load(b_ptr + rk[:, None] * N + rn[None, :])
        tl.store(c_ptr + rm[:, None] * N + rn[None, :], tl.dot(a, b))

    src, dst = torch.randn(100), torch.empty(100)
    with count_traffic() as t:
        twice[(1,)](src, dst, 100, BLOCK=128)
    torch.testing.assert_close(dst, 2 * src)
    assert t.requested_load == 2 * 100 * 4 and t.unique_load == 100 * 4  # masked lanes excluded
    assert t.requested_store == t.unique_store == 100 * 4 and t.unique == 200 * 4 and t.dot_flops == 0
    a, b, c = torch.randn(16, 32), torch.randn(32, 16), torch.empty(16, 16)
    with count_traffic() as t:
        mm[(1,)](a, b, c, 16, 16, 32)
    torch.testing.assert_close(c, a @ b, rtol=1e-4, atol=1e-4)
    assert t.dot_flops == 2 * 16 * 16 * 32 and t.unique == (16 * 32 * 2 + 16 * 16) * 4


@interpreting
def test_traffic_report_on_a_tiny_layer():
    """The fused forward's unique bytes are exactly the fused bound (x + weights + y): nothing else reaches
    memory; the report checks the kernels' results against float64 while counting."""
    from bsconv_fused.bench import traffic_report

    rows = traffic_report.measure_case(LayerCase(1, 8, 16, 6, 6, 3, 1, "fp32"))
    totals = {r["direction"]: r for r in rows if r["kernel"] == "total"}
    assert set(totals) == {"forward", "backward"}
    assert totals["forward"]["unique_x"] == pytest.approx(1.0)
    assert totals["forward"]["dot_x"] >= 1.0 and totals["backward"]["dot_x"] >= 2.0
    assert all(r["max_err"] < 1e-5 for r in totals.values())
    assert "| layer (N=1)" in traffic_report.format_table(rows)


# ------------------------------------------------------------------------------------------------------ CLI
def test_cli_rejects_bad_flags():
    from bsconv_fused.__main__ import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(["--dtypes", "fp8"])
    assert build_parser().parse_args(["--dtypes", "fp16,fp32"]).dtypes == ["fp16", "fp32"]
    from bsconv_fused.__main__ import main

    with pytest.raises(SystemExit):
        main(["--contenders", "nonesuch", "--no-parity", "--no-save"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU quick mode; the GPU run is benchmarks/run_gpu.sh")
def test_main_job_quick_on_cpu(tmp_path):
    out = tmp_path / "res"
    proc = subprocess.run([sys.executable, "-m", "bsconv_fused", "--quick", "--out", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Parity vs float64" in proc.stdout and "Summary" in proc.stdout
    doc = json.loads((out / "results.json").read_text())
    assert doc["machine"]["device"] == "cpu" and doc["machine"]["torch"] == torch.__version__
    statuses = {(r["contender"], r["status"]) for r in doc["rows"]}
    assert ("eager-nchw", "ok") in statuses and ("bound-fused", "bound") in statuses
    assert {r["suite"] for r in doc["rows"]} == {"layers", "networks"}
    assert (out / "results.csv").exists() and (out / "summary.md").exists()
    assert "VERDICT cpu" in proc.stdout and "VERDICT cpu" in (out / "summary.md").read_text()
    assert {d["contender"] for d in doc["dropped_contenders"]} == {"compile", "compile-max-autotune"}
    parity = json.loads((out / "parity.json").read_text())
    assert parity["passed"] and any(r["status"] == "pass" for r in parity["results"])
    # the traffic report runs only when asked for (--suites ...,traffic or --traffic on)
    assert "traffic" not in doc and not (out / "traffic.md").exists() and "[traffic" not in proc.stdout


def test_no_bench_writes_no_empty_result_files(tmp_path, capsys):
    from bsconv_fused.__main__ import main

    out = tmp_path / "res"
    assert main(["--no-bench", "--no-parity", "--out", str(out)]) == 0
    assert not out.exists()
    assert "Results in" not in capsys.readouterr().out


def test_noisy_rows_are_remeasured_interleaved():
    from bsconv_fused.bench.layers import remeasure_noisy
    from bsconv_fused.bench.results import NOISY_SPREAD, mark_noisy

    def row(name, kind, med, p20, p80):
        return Row("t", "c", "forward", name, kind, "ok", median_us=med, p20_us=p20, p80_us=p80)

    rows = [row("fused", "fused", 10.0, 5.0, 20.0), row("base", "baseline", 20.0, 19.0, 21.0),
            row("other", "baseline", 30.0, 29.0, 31.0), Row("t", "c", "forward", "bound-fused", "bound", "bound")]
    calls = []
    runs = {(r.contender, "forward"): (lambda n=r.contender: calls.append(n) or sum(range(200))) for r in rows[:3]}
    remeasure_noisy(rows, runs, torch.device("cpu"), quick=True)
    fused, base, other = rows[:3]
    # the noisy row and the baseline it is compared with were timed again, in alternation; the rest was not
    assert {"fused", "base"} == set(calls) and "other" not in calls
    assert calls.index("base") < len(calls) - 1 - calls[::-1].index("fused")  # interleaved, not one after the other
    assert fused.p20_us != 5.0 and base.p20_us != 19.0 and other.p20_us == 29.0
    assert "re-measured interleaved with fused, base" in fused.note
    assert fused.noisy == (fused.p80_us / fused.p20_us > NOISY_SPREAD)
    flagged = [row("a", "fused", 10.0, 5.0, 20.0), row("b", "fused", 10.0, 9.5, 10.5)]
    mark_noisy(flagged)
    assert [r.noisy for r in flagged] == [True, False]


def test_verdict_is_one_line_per_direction_with_geometric_mean_and_noisy_share():
    def pair(case, direction, fused_us, base_us, noisy=False):
        return [Row("layers", case, direction, "f", "fused", "ok", median_us=fused_us, p20_us=fused_us,
                    p80_us=fused_us, noisy=noisy),
                Row("layers", case, direction, "b", "baseline", "ok", median_us=base_us, p20_us=base_us,
                    p80_us=base_us)]

    rows = pair("a", "forward", 10.0, 20.0) + pair("b", "forward", 10.0, 5.0, noisy=True) + \
        pair("a", "backward", 10.0, 30.0) + \
        [Row("layers", "c", "forward", "f", "fused", "wrong"),
         Row("layers", "c", "forward", "b", "baseline", "ok", median_us=1.0, p20_us=1.0, p80_us=1.0)]
    lines = report.verdict(rows, "cpu (test)")
    assert len(lines) == 2
    fwd, bwd = lines
    assert fwd.startswith("VERDICT cpu (test) forward: fused 1.00x, on par with the best baseline")
    assert "geometric mean over 2 cases, range 0.50x-2.00x; 1 of 2 noisy" in fwd
    assert "1 more cases without a correct fused result" in fwd
    assert bwd.startswith("VERDICT cpu (test) backward: fused 3.00x, faster than") and "rerun" not in fwd + bwd
    noisy_rows = pair("a", "forward", 10.0, 20.0, noisy=True)
    assert report.verdict(noisy_rows, "cpu")[0].endswith("most cases are noisy: rerun on an idle machine before "
                                                          "quoting this")


def test_dropped_contenders_are_listed_with_a_reason():
    from bsconv_fused.bench.contenders import dropped

    got = dict(dropped(torch.device("cpu"), quick=False))
    assert set(got) == {"compile", "compile-max-autotune"} and all("GPU-only" in w for w in got.values())
    assert dict(dropped(torch.device("cuda"), quick=True)) == {
        "compile-max-autotune": "--quick (max-autotune tunes for minutes per shape)"}
    assert dict(dropped(torch.device("cuda"), quick=False, compile_baselines=False))["compile"] == "--no-compile"


def test_traffic_report_progress_streams(monkeypatch):
    """The child's progress lines reach the log while it still runs, not when it ends."""
    import time

    from bsconv_fused.bench import traffic_report

    script = ("import sys, time\n"
              "print('[traffic 1/2] first', file=sys.stderr, flush=True)\n"
              "time.sleep(1.5)\n"
              "print('[traffic 2/2] second', file=sys.stderr, flush=True)\n"
              "print('" + traffic_report._MARK + "[{\"a\": 1}]')\n")
    monkeypatch.setattr(traffic_report, "_child_cmd", lambda quick, dtype: [sys.executable, "-c", script])
    seen = []
    t0 = time.monotonic()
    rows = traffic_report.run(True, log=lambda m: seen.append((m, time.monotonic() - t0)))
    assert rows == [{"a": 1}] and [m for m, _ in seen] == ["[traffic 1/2] first", "[traffic 2/2] second"]
    assert seen[1][1] - seen[0][1] > 1.0  # the first line arrived before the child slept
    monkeypatch.setattr(traffic_report, "_child_cmd",
                        lambda quick, dtype: [sys.executable, "-c", "import time; time.sleep(30)"])
    with pytest.raises(RuntimeError, match="did not finish within 1"):
        traffic_report.run(True, timeout=1, log=lambda m: None)


def test_timing_quantiles_and_cpu_timer():
    from bsconv_fused.bench.timing import _quantiles, time_cpu

    t = _quantiles([float(v) for v in range(10, 0, -1)])
    assert t.median == 5.5 and t.p20 == pytest.approx(2.8) and t.p80 == pytest.approx(8.2) and t.reps == 10
    assert _quantiles([3.0]).p20 == 3.0
    m = time_cpu(lambda: sum(range(1000)), min_run_time=0.01)
    assert 0 < m.p20 <= m.median <= m.p80


def test_network_suite_on_cpu():
    from bsconv_fused.bench import networks

    cpu = torch.device("cpu")
    (quick,) = networks.network_cases(cpu, ["fp32"], quick=True)
    assert quick.model == "cifar_resnet20_bsconvu" and quick.directions == ("inference", "train-step")
    full = networks.network_cases(cpu, ["fp32"], quick=False)
    assert {c.model for c in full} == {"mobilenetv1_w1_bsconvu", "cifar_resnet110_bsconvu"}
    names = [c.name for c in networks.net_contenders(cpu, quick=False)]
    assert "compile" not in names and {"torch-nchw", "torch-cl"} <= set(names)
    assert all(not c.channels_last for c in networks.net_contenders(cpu, quick=True))
