"""The activation epilogue of the fused forward: y = act(DW(PW(x) + mid_bias) + bias) in the kernels.

Oracle: the torch activation (F.relu, F.relu6, F.hardswish, F.silu) applied to the float64 two-layer result, under
the shared tolerance rule of bsconv_fused.testing (the same-dtype two-layer path also gets the activation). Every
fused call asserts that the backend's own op ran and received the activation code, and, for Triton, that the
kernels were compiled with it (the ACT meta-parameter of every launch). The CUDA kernels' epilogue is covered on
the CPU by tests/test_cuda_emulation.py (emu_test's act_* cases); on real GPUs it is untested here.
"""
from __future__ import annotations

import functools
import os
import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bsconv_fused import activation as A
from bsconv_fused import bsconv_u, ops
from bsconv_fused.functional import bsconv_u_reference
from bsconv_fused.inference import FusedBSConv, fuse_for_inference
from bsconv_fused.modules import BSConvU
from bsconv_fused.testing import BACKEND_OPS, Case, OpRecorder, check, fused_targets

TARGETS = fused_targets()
ACTS = ("relu", "relu6", "hardswish", "silu")
DTYPES = (torch.float32, torch.float16, torch.bfloat16)
LAYOUTS = ("nchw", "channels_last", "sliced")
NO_GRAD = (False,) * 5

pytestmark = pytest.mark.skipif(not TARGETS, reason="no fused backend here")


def _ids(targets):
    return [f"{b}-{d}" for b, d in targets]


def _ran_with(rec: OpRecorder, backend: str, code: int) -> None:
    """The backend's forward op ran, every forward op got ``code``, and Triton compiled its kernels with it."""
    rec.assert_ran(backend, backward=False)
    acts = rec.forward_activations()
    assert acts and all(a == code for a in acts), f"forward ops got activations {acts}, expected {code}"
    if backend == "triton":
        assert rec.triton_launches == len(rec.triton_meta) > 0
        assert all(m.get("ACT") == code for m in rec.triton_meta), [m.get("ACT") for m in rec.triton_meta]


# ----------------------------------------------------------------------------------------------- the epilogue
# Odd sizes with stride 2 on every backend (partial output tiles, borders); stride 1 as well where a call is cheap:
# the Triton interpreter takes seconds per call, and its stride-1 epilogue is covered per kernel variant below.
GEOMETRIES = [(b, d, s) for b, d in TARGETS for s in ((2,) if b == "triton" else (1, 2))]


@pytest.mark.parametrize("backend,device,stride", GEOMETRIES, ids=[f"{b}-{d}-s{s}" for b, d, s in GEOMETRIES])
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_epilogue_matches_float64(backend, device, stride, act, dtype, layout):
    # O(1) values of both signs: the zero branches of relu / relu6 and the curved parts of hardswish / silu;
    # test_epilogue_variants_and_nan drives outputs past -3 and 6, where the remaining clamps bite
    c = Case(N=1, C_in=5, C_out=12, H=7, W=9, stride=(stride, stride), layout=layout, requires=NO_GRAD,
             dtype=dtype, activation=act)
    rec = OpRecorder()
    fn = functools.partial(bsconv_u, backend=backend)

    def recorded(*a, **k):
        with rec:
            return fn(*a, **k)

    with torch.no_grad():
        check(c, recorded, device, backend=backend)
    _ran_with(rec, backend, A.ACTIVATION_CODES[act])


@pytest.mark.parametrize("backend,device", TARGETS, ids=_ids(TARGETS))
def test_epilogue_variants_and_nan(backend, device):
    """Every Triton forward variant takes the epilogue; NaN passes through relu / relu6 / hardswish like torch's."""
    variants = ("staged", "flat", "separable") if backend == "triton" else ("",)
    x = torch.randn(1, 4, 7, 9, device=device)
    x[0, :, 3, 4] = float("nan")  # one input pixel: its pointwise column, then the taps reading it, are NaN
    pw = torch.randn(8, 4, 1, 1, device=device) / 2
    dw = torch.randn(8, 1, 3, 3, device=device) / 3
    b = torch.linspace(-9, 9, 8, device=device)  # outputs beyond -3 and 6: every clamp of relu6 / hardswish bites
    ref0 = bsconv_u_reference(x.double(), pw.double(), dw.double(), b.double(), padding=1)
    assert (ref0 > 6).any() and (ref0 < -3).any() and ref0.isnan().any()
    old = os.environ.get("BSCONV_FUSED_TRITON_FWD")
    try:
        for v in variants:
            if v:
                os.environ["BSCONV_FUSED_TRITON_FWD"] = v
            for act in ACTS:
                with OpRecorder() as rec, torch.no_grad():
                    y = bsconv_u(x, pw, dw, b, padding=1, backend=backend, activation=act)
                _ran_with(rec, backend, A.ACTIVATION_CODES[act])
                ref = A.apply(ref0, act)
                assert torch.equal(y.isnan(), ref.isnan()), (v, act)
                torch.testing.assert_close(y.double(), ref, rtol=1e-5, atol=1e-5, equal_nan=True, msg=f"{v} {act}")
    finally:
        if old is None:
            os.environ.pop("BSCONV_FUSED_TRITON_FWD", None)
        else:
            os.environ["BSCONV_FUSED_TRITON_FWD"] = old


# ----------------------------------------------------------------------------------------------- gradients
@pytest.mark.parametrize("backend,device", TARGETS, ids=_ids(TARGETS))
@pytest.mark.parametrize("act", ACTS)
def test_grad_path_equals_unfused_activation(backend, device, act):
    """With gradients needed, bsconv_u runs the op without epilogue and the torch activation after it: the same
    values and gradients as op-then-F.act, and within the tolerance rule of float64 for y and every gradient."""
    c = Case(N=1, C_in=3, C_out=6, H=5, W=7, stride=(2, 1), activation=act)
    rec = OpRecorder()

    def recorded(*a, **k):
        with rec:
            return bsconv_u(*a, backend=backend, **k)

    check(c, recorded, device, backend=backend)
    assert rec.forward_activations() == [0], "a forward that needs gradients must run without the epilogue"

    g = torch.Generator().manual_seed(3)
    leaves = [torch.randn(*s, generator=g).to(device).requires_grad_() for s in
              ((1, 3, 5, 7), (6, 3, 1, 1), (6, 1, 3, 3), (6,), (6,))]
    x, pw, dw, b, m = leaves
    y = bsconv_u(x, pw, dw, b, 1, 1, mid_bias=m, backend=backend, activation=act)
    y2 = getattr(F, act)(bsconv_u(x, pw, dw, b, 1, 1, mid_bias=m, backend=backend))
    assert torch.equal(y, y2)
    gy = torch.randn_like(y)
    for a, b2 in zip(torch.autograd.grad(y, leaves, gy), torch.autograd.grad(y2, leaves, gy)):
        assert torch.equal(a, b2)


@pytest.mark.parametrize("backend,device", TARGETS, ids=_ids(TARGETS))
def test_op_with_epilogue_refuses_autograd(backend, device):
    op = torch.ops.bsconv_fused.triton_forward.default if backend == "triton" else \
        torch.ops.bsconv_fused.cpp_forward.default
    x = torch.randn(1, 3, 5, 5, device=device, requires_grad=True)
    pw, dw = torch.randn(4, 3, device=device), torch.randn(4, 1, 3, 3, device=device)
    with pytest.raises(RuntimeError, match=r"activation=2 \(the inference epilogue\) has no gradients"):
        op(x, pw, dw, None, None, [1, 1], [1, 1], [1, 1], 2)
    # without gradients the same call runs, and activation=0 keeps the ordinary autograd
    with torch.no_grad():
        y = op(x, pw, dw, None, None, [1, 1], [1, 1], [1, 1], 2)
    assert y.min() >= 0 and y.max() <= 6
    op(x, pw, dw, None, None, [1, 1], [1, 1], [1, 1], 0).sum().backward()
    assert x.grad is not None


@pytest.mark.parametrize("backend,device", TARGETS, ids=_ids(TARGETS))
def test_bad_activation_codes_and_names(backend, device):
    op = torch.ops.bsconv_fused.triton_forward.default if backend == "triton" else \
        torch.ops.bsconv_fused.cpp_forward.default
    x, pw, dw = torch.randn(1, 3, 5, 5, device=device), torch.randn(4, 3, device=device), \
        torch.randn(4, 1, 3, 3, device=device)
    for bad in (5, -1):
        with pytest.raises(ValueError, match="activation must be one of"):
            op(x, pw, dw, None, None, [1, 1], [1, 1], [1, 1], bad)
    for bad in ("gelu", "ReLU", 1, nn.ReLU()):
        with pytest.raises(ValueError, match=re.escape("activation must be None or one of ('none', 'relu', "
                                                       "'relu6', 'hardswish', 'silu')")):
            bsconv_u(x, pw[:, :, None, None], dw, padding=1, backend=backend, activation=bad)


def test_bad_name_raises_on_the_torch_backend_too():
    x, pw, dw = torch.randn(1, 3, 5, 5), torch.randn(4, 3, 1, 1), torch.randn(4, 1, 3, 3)
    with pytest.raises(ValueError, match="activation must be None or one of"):
        bsconv_u(x, pw, dw, padding=1, backend="torch", activation="swish")
    for act in (None, "none") + ACTS:
        y = bsconv_u(x, pw, dw, padding=1, backend="torch", activation=act)
        assert torch.equal(y, A.apply(bsconv_u_reference(x, pw, dw, padding=1), act))


def test_codes_match_the_kernels_tables():
    """One table: the Triton epilogue re-exports it, the C++ header spells the same codes."""
    from bsconv_fused.triton import epilogue

    assert epilogue.ACTIVATION_CODES is A.ACTIVATION_CODES
    header = open(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "csrc",
                               "activation.h")).read()
    consts = {k.lower(): int(v) for k, v in re.findall(r"constexpr int k(\w+) = (\d+);", header)}
    assert {n: consts[n] for n in A.ACTIVATION_CODES} == A.ACTIVATION_CODES
    assert consts["count"] == len(A.ACTIVATION_CODES)


# ----------------------------------------------------------------------------------------------- inference fusion
class _Net(nn.Module):
    def __init__(self, act: nn.Module):
        super().__init__()
        self.body = nn.Sequential(BSConvU(4, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), act,
                                  BSConvU(8, 6, 3, stride=2, padding=1), type(act)())

    def forward(self, x):
        return self.body(x)


@pytest.mark.parametrize("backend,device", TARGETS, ids=_ids(TARGETS))
@pytest.mark.parametrize("act", [nn.ReLU, nn.ReLU6, nn.Hardswish, nn.SiLU])
def test_fuse_for_inference_uses_the_epilogue(backend, device, act):
    torch.manual_seed(0)
    model = _Net(act()).eval()
    with torch.no_grad():
        bn = model.body[1]
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 1.5)
    for m in model.modules():
        if isinstance(m, BSConvU):
            m.backend = "torch"
    fused = fuse_for_inference(model).to(device)
    layers = [m for m in fused.modules() if isinstance(m, FusedBSConv)]
    assert len(layers) == 2 and all(type(m.activation) is act for m in layers)
    name = A.module_name(act())
    assert all(m.activation_name == name for m in layers)
    for m in layers:
        m.backend = backend
    x = torch.randn(1, 4, 7, 9)
    with torch.no_grad():
        expected = model.double()(x.double())
        with OpRecorder() as rec:
            y = fused(x.to(device))
    _ran_with(rec, backend, A.ACTIVATION_CODES[name])
    assert len(rec.forward_activations()) == 2
    torch.testing.assert_close(y.double().cpu(), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("backend,device", TARGETS, ids=_ids(TARGETS))
def test_fused_layer_with_a_subclassed_activation_runs_it_as_a_module(backend, device):
    class LeakyReLU6(nn.ReLU6):  # a subclass may change forward: never taken for the epilogue
        def forward(self, x):
            return torch.where(x < 0, 0.1 * x, super().forward(x))

    layer = BSConvU(3, 5, 3, padding=1).eval()
    model = nn.Sequential(layer, LeakyReLU6()).eval()
    fused = fuse_for_inference(model)
    f = fused[0]
    assert isinstance(f, FusedBSConv) and f.activation_name is None
    f.backend = backend
    x = torch.randn(1, 3, 6, 6)
    with torch.no_grad():
        expected = model(x)
        with OpRecorder() as rec:
            y = fused(x.to(device))
    assert rec.forward_activations() == [0]
    torch.testing.assert_close(y.cpu(), expected, rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------------------------- fake / compile
@pytest.mark.parametrize("backend,device", TARGETS, ids=_ids(TARGETS))
def test_opcheck_with_activation(backend, device):
    op = ops.triton_forward if backend == "triton" else torch.ops.bsconv_fused.cpp_forward.default
    x = torch.randn(2, 5, 6, 7, device=device).to(memory_format=torch.channels_last)
    pw, dw, b = torch.randn(9, 5, device=device), torch.randn(9, 1, 3, 3, device=device), torch.randn(9, device=device)
    torch.library.opcheck(op, (x, pw, dw, b, None, [2, 1], [1, 1], [1, 1], 4),
                          test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_dynamic"))


@pytest.mark.parametrize("backend,device", TARGETS, ids=_ids(TARGETS))
def test_compile_fullgraph_inference_with_epilogue(backend, device):
    """torch.compile traces the op with its activation argument (no graph break) and runs it through the fake
    kernel and aot_autograd to the same values as eager."""
    torch._dynamo.reset()
    x = torch.randn(2, 5, 6, 7, device=device)
    pw, dw, b = torch.randn(9, 5, 1, 1, device=device), torch.randn(9, 1, 3, 3, device=device), \
        torch.randn(9, device=device)
    graphs = []

    def capture(gm, example_inputs):
        graphs.append(gm)
        return torch._dynamo.lookup_backend("aot_eager")(gm, example_inputs)

    def f(x):
        return bsconv_u(x, pw, dw, b, 1, 1, backend=backend, activation="hardswish")

    with torch.no_grad():
        eager = f(x)
        compiled = torch.compile(f, fullgraph=True, backend=capture)(x)
    op = getattr(torch.ops.bsconv_fused, BACKEND_OPS[backend][0].split(".")[1]).default
    calls = [n for g in graphs for n in g.graph.nodes if n.op == "call_function" and n.target is op]
    assert len(calls) == 1 and calls[0].args[8] == A.ACTIVATION_CODES["hardswish"], [n.args for n in calls]
    torch.testing.assert_close(compiled, eager)
