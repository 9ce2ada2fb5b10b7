"""pytest-benchmark regression tracking of single layers: every contender of the layer benchmark on a few cases.

    pytest benchmarks/ --benchmark-disable        # CI: each benchmark runs once, as a smoke test
    pytest benchmarks/ --benchmark-autosave       # track: compare runs with --benchmark-compare
On a GPU the cases are performance.md's table at N=64 fp16; on the CPU two small layers in fp32. Every contender is
checked against float64 once before it is benchmarked (the full suite with bounds and reports is
``python -m bsconv_fused``).
"""
from __future__ import annotations

import pytest
import torch

from bsconv_fused.bench.checks import is_wrong, max_rel_error
from bsconv_fused.bench.contenders import contenders
from bsconv_fused.bench.layers import make_inputs, reference64
from bsconv_fused.bench.suites import LayerCase, table_cases

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
if DEVICE.type == "cuda":
    CASES = table_cases(64, 3, 1, "fp16")
else:
    CASES = [LayerCase(1, 32, 64, 28, 28, 3, 1, "fp32"), LayerCase(1, 128, 128, 14, 14, 3, 2, "fp32")]
# max-autotune compiles for minutes per shape: it belongs to the full benchmark, not to regression tracking
CONTENDERS = [c for c in contenders(DEVICE, quick=True) if c.name != "compile-max-autotune"]


def _sync():
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


@pytest.fixture(autouse=True)
def _cudnn_benchmark():
    prev = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = True
    yield
    torch.backends.cudnn.benchmark = prev


def _layout(t, cl):
    return t.contiguous(memory_format=torch.channels_last) if cl and t.dim() == 4 else t.contiguous()


@pytest.mark.parametrize("contender", CONTENDERS, ids=[c.name for c in CONTENDERS])
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
@pytest.mark.parametrize("direction", ["forward", "forward+backward"])
def test_layer(benchmark, case, contender, direction):
    if contender.unavailable:
        pytest.skip(contender.unavailable)
    benchmark.group = f"{case.name} {direction}"
    inputs, dy = make_inputs(case, DEVICE)
    ref_y, ref_grads = reference64(case, inputs, dy)
    training = direction != "forward"
    fn = contender.build(case, training)
    xs = [_layout(t, contender.channels_last).requires_grad_(training) for t in inputs]
    g = _layout(dy, contender.channels_last)
    if training:
        y = fn(*xs)
        err = max_rel_error([y, *torch.autograd.grad(y, xs, g)], [ref_y, *ref_grads])

        def run():
            torch.autograd.grad(fn(*xs), xs, g)
            _sync()
    else:
        with torch.no_grad():
            err = max_rel_error([fn(*xs)], [ref_y])

        def run():
            with torch.no_grad():
                fn(*xs)
            _sync()
    assert not is_wrong(err, case.dtype), f"{contender.name} disagrees with float64: max rel err {err:.2e}"
    benchmark.extra_info.update(device=str(DEVICE), max_err=err)
    benchmark(run)
