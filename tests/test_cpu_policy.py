"""The CPU backend policy (bsconv_fused.cpu_policy.cpu_kernels_lose): its contract, and that it agrees with the
committed CPU measurements it was read off (a layer the rule sends to the fused kernels was measured at >= 0.95x of
the best two-layer path in the forward and in forward+backward; a layer it sends to the two-layer path was not)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from bsconv_fused._shapes import Geometry
from bsconv_fused.cpu_policy import cpu_kernels_lose

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "cpu-epyc-2core-2026-12-02"
TARGET = 0.95


def geom(N=1, C_in=64, C_out=128, H=56, W=56, k=3, stride=1, dilation=1):
    return Geometry(N, C_in, C_out, H, W, k, k, (stride, stride), (k // 2, k // 2), (dilation, dilation))


def test_fused_where_measured_to_win():
    assert cpu_kernels_lose(geom(), torch.float32, 1) is None
    assert cpu_kernels_lose(geom(N=8, C_in=128, C_out=128), torch.float32, 1) is None


@pytest.mark.parametrize("g,dtype,words", [
    (geom(), torch.bfloat16, ["bfloat16", "float32"]),
    (geom(), torch.float16, ["float16"]),
    (geom(k=5), torch.float32, ["5x5", "3x3"]),
    (geom(stride=2), torch.float32, ["stride (2, 2)"]),
    (geom(dilation=2), torch.float32, ["dilation (2, 2)"]),
    (geom(C_in=128, C_out=256, H=28, W=28), torch.float32, ["28x28", "cache"]),
    (geom(C_in=256, C_out=256), torch.float32, ["C_in=256 > 128"]),
    (geom(C_in=32, C_out=64), torch.float32, ["single image", "C_in=32"]),
], ids=["bf16", "fp16", "k5", "stride2", "dilation2", "small_map", "wide_c_in", "thin_single_image"])
def test_reasons_name_the_cause(g, dtype, words):
    why = cpu_kernels_lose(g, dtype, 1)
    assert isinstance(why, str) and why
    for w in words:
        assert w in why, (w, why)


def test_pure_and_thread_independent():
    g = geom(C_in=512, C_out=512, H=14, W=14)
    assert cpu_kernels_lose(g, torch.float32, 1) == cpu_kernels_lose(g, torch.float32, 1)
    for threads in (1, 2, 64):  # one rule at every thread count (measured at one: see the module docstring)
        assert cpu_kernels_lose(geom(), torch.float32, threads) is None
        assert cpu_kernels_lose(g, torch.float32, threads) is not None


@pytest.mark.parametrize("threads", [0, -1, 1.5, True, None])
def test_bad_threads(threads):
    with pytest.raises(ValueError, match=r"threads must be an int >= 1"):
        cpu_kernels_lose(geom(), torch.float32, threads)


@pytest.mark.parametrize("dtype", [torch.int32, "float32", None])
def test_bad_dtype(dtype):
    with pytest.raises(ValueError, match=r"dtype must be a floating torch.dtype"):
        cpu_kernels_lose(geom(), dtype, 1)


def _measured():
    files = sorted(RESULTS.glob("results-*.json"))
    if not files:
        pytest.skip(f"no committed CPU measurements under {RESULTS}")
    cases = {}
    for f in files:
        for r in json.loads(f.read_text())["rows"]:
            key = (r["N"], r["C_in"], r["C_out"], r["H"], r["W"], r["K"], r["stride"], r["dtype"], r["threads"])
            cases.setdefault(key, {})[r["direction"]] = r["speedup"]
    return cases


def test_rule_agrees_with_the_measurements():
    dtypes = {"fp32": torch.float32, "fp64": torch.float64, "bf16": torch.bfloat16, "fp16": torch.float16}
    checked = 0
    for (N, C_in, C_out, H, W, K, stride, dt, threads), speedups in _measured().items():
        assert set(speedups) == {"forward", "forward+backward"}
        g = Geometry(N, C_in, C_out, H, W, K, K, (stride, stride), (K // 2, K // 2), (1, 1))
        why = cpu_kernels_lose(g, dtypes[dt], threads)
        wins = min(speedups.values()) >= TARGET
        assert (why is None) == wins, (g, dt, speedups, why)
        checked += 1
    assert checked >= 20
