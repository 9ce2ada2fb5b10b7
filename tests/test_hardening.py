"""What long training runs and deployments meet besides the parity suite: autocast, deterministic mode, empty
batches, missing gradients, double backward, module copies and serialisation, torch.export and ONNX.

Every fused run names its backend and proves it ran (bsconv_fused.testing.OpRecorder)."""
from __future__ import annotations

import copy
import io
import pickle

import pytest
import torch
import torch.nn.functional as F

from bsconv_fused import BSConvS, BSConvU, _ext, bsconv_u, bsconv_u_reference
from bsconv_fused.testing import OpRecorder, fused_targets, rel_err, tolerance


TARGETS = fused_targets()
needs_fused = pytest.mark.skipif(not TARGETS, reason="no fused backend here")


def _inputs(device, dtype=torch.float32, N=2, C_in=4, C_out=8, H=6, W=7, k=3, grad=True):
    g = torch.Generator().manual_seed(0)
    mk = lambda *s: torch.randn(*s, generator=g).to(device=device, dtype=dtype).requires_grad_(grad)  # noqa: E731
    return mk(N, C_in, H, W), mk(C_out, C_in, 1, 1), mk(C_out, 1, k, k), mk(C_out), mk(C_out)


# ------------------------------------------------------------------------------------------------- autocast
def test_cpu_autocast_bf16_matches_the_two_layer_path_in_values():
    if not _ext.available():
        pytest.skip(_ext.reason())
    x, pw, dw, b, _ = _inputs("cpu", grad=False)
    with OpRecorder() as rec, torch.autocast("cpu", dtype=torch.bfloat16):
        y = bsconv_u(x, pw, dw, b, padding=1, backend="cpu")
        two = bsconv_u_reference(x, pw, dw, b, padding=1)
    rec.assert_ran("cpu", backward=False)
    assert y.dtype == two.dtype == torch.bfloat16
    ref = bsconv_u_reference(*(t.to(torch.bfloat16).double() for t in (x, pw, dw, b)), padding=1)
    assert rel_err(y, ref) <= tolerance(torch.bfloat16, False, rel_err(two, ref))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_cuda_autocast_matches_the_two_layer_path_in_values(dtype):
    for backend, device in TARGETS:
        if device != "cuda":
            continue
        x, pw, dw, b, _ = _inputs("cuda", grad=False)
        with OpRecorder() as rec, torch.autocast("cuda", dtype=dtype):
            y = bsconv_u(x, pw, dw, b, padding=1, backend=backend)
            two = bsconv_u_reference(x, pw, dw, b, padding=1)
        rec.assert_ran(backend, backward=False)
        assert y.dtype == two.dtype == dtype
        ref = bsconv_u_reference(*(t.to(dtype).double() for t in (x, pw, dw, b)), padding=1)
        assert rel_err(y, ref) <= tolerance(dtype, False, rel_err(two, ref)), backend


# -------------------------------------------------------------------------------------------- determinism
@needs_fused
@pytest.mark.parametrize("backend,device", TARGETS)
def test_backward_is_bitwise_reproducible_in_deterministic_mode(backend, device):
    prev = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        runs = []
        for _ in range(2):
            x, pw, dw, b, m = _inputs(device, N=3, C_in=6, C_out=12, H=9, W=8)
            with OpRecorder() as rec:
                y = bsconv_u(x, pw, dw, b, padding=1, mid_bias=m, backend=backend)
                grads = torch.autograd.grad(y, (x, pw, dw, b, m), torch.ones_like(y))
            rec.assert_ran(backend)
            runs.append((y, *grads))
        for a, c in zip(*runs):
            assert torch.equal(a, c)
    finally:
        torch.use_deterministic_algorithms(prev)


# --------------------------------------------------------------------------------------------- edge cases
@pytest.mark.parametrize("backend", ["auto", "torch"])
def test_empty_batch_gives_an_empty_output_like_conv2d(backend):
    x, pw, dw, b, _ = _inputs("cpu", N=0)
    y = bsconv_u(x, pw, dw, b, padding=1, backend=backend)
    assert y.shape == (0, 8, 6, 7)
    y.sum().backward()
    assert pw.grad is not None and torch.all(pw.grad == 0)


def test_zero_size_output_raises_as_pytorch_does():
    x, pw, dw, b, _ = _inputs("cpu", H=2, W=2, k=5)
    with pytest.raises(RuntimeError):
        F.conv2d(F.conv2d(x, pw), dw, b, groups=8)  # PyTorch's own verdict on the same layer
    with pytest.raises(ValueError, match="output would be empty"):
        bsconv_u(x, pw, dw, b)


@needs_fused
@pytest.mark.parametrize("backend,device", TARGETS)
def test_inputs_without_grad_and_frozen_weights(backend, device):
    x, pw, dw, b, m = _inputs(device, grad=False)
    pw.requires_grad_(True)  # fine-tuning only the pointwise weight
    with OpRecorder() as rec:
        y = bsconv_u(x, pw, dw, b, padding=1, mid_bias=m, backend=backend)
        (g,) = torch.autograd.grad(y.square().sum(), [pw])
    rec.assert_ran(backend)
    pr = pw.detach().double().requires_grad_()
    ref = bsconv_u_reference(x.double(), pr, dw.double(), b.double(), padding=1, mid_bias=m.double())
    (rg,) = torch.autograd.grad(ref.square().sum(), [pr])
    assert rel_err(g, rg) <= 1e-4


@needs_fused
@pytest.mark.parametrize("backend,device", TARGETS)
def test_double_backward_matches_the_two_layer_path(backend, device):
    # a gradient penalty: d/dθ of |dL/dθ|^2 needs the backward of the backward
    def penalty_grads(b_):
        x, pw, dw, b, m = (t.double() if device == "cpu" and backend == "cpu" else t
                           for t in _inputs(device, N=1, C_in=3, C_out=6, H=5, W=5))
        leaves = [t.detach().requires_grad_() for t in (x, pw, dw, b, m)]
        y = bsconv_u(leaves[0], leaves[1], leaves[2], leaves[3], (2, 1), 1, (1, 2), mid_bias=leaves[4], backend=b_)
        g = torch.autograd.grad(y.square().sum(), leaves, create_graph=True)
        pen = sum(gi.square().sum() for gi in g)
        return torch.autograd.grad(pen, leaves, allow_unused=True)

    got = penalty_grads(backend)
    want = penalty_grads("torch")
    for a, r in zip(got, want):
        if r is None:
            assert a is None or torch.all(a == 0)
        else:
            assert rel_err(a, r) <= 1e-4


@pytest.mark.skipif(not _ext.available(), reason="needs the extension's CPU kernels")
def test_gradgradcheck_float64():
    x, pw, dw, b, m = (t.double().detach().requires_grad_() for t in _inputs("cpu", N=1, C_in=2, C_out=3, H=4, W=4))
    fn = lambda *a: bsconv_u(*a[:4], (2, 1), 1, (1, 2), mid_bias=a[4], backend="cpu")  # noqa: E731
    assert torch.autograd.gradgradcheck(fn, (x, pw, dw, b, m))


# ------------------------------------------------------------------------------- module copies and storage
@needs_fused
@pytest.mark.parametrize("backend,device", TARGETS)
def test_module_copies_dtype_changes_and_serialisation(backend, device):
    torch.manual_seed(0)
    m = BSConvS(4, 8, 3, padding=1, with_bn=True, p=0.5, backend=backend).to(device).eval()
    x = torch.randn(2, 4, 6, 6, device=device)
    with torch.no_grad(), OpRecorder() as rec:
        y = m(x)
    rec.assert_ran(backend, backward=False)
    buf = io.BytesIO()
    torch.save(m, buf)
    buf.seek(0)
    copies = [copy.deepcopy(m), pickle.loads(pickle.dumps(m)), torch.load(buf, weights_only=False)]
    for c in copies:
        assert c.backend == backend
        with torch.no_grad():
            assert torch.equal(c(x), y)
    low = torch.bfloat16
    m_low = copy.deepcopy(m).to(low)
    with torch.no_grad(), OpRecorder() as rec:
        y_low = m_low(x.to(low))
    rec.assert_ran(backend, backward=False)
    assert y_low.dtype == low
    assert rel_err(y_low, y) <= 5e-2  # bf16 parameters and input: a few roundings of 2^-8
    state = m.state_dict()
    fresh = BSConvS(4, 8, 3, padding=1, with_bn=True, p=0.5, backend=backend).to(device).eval()
    fresh.load_state_dict(state)
    with torch.no_grad():
        assert torch.equal(fresh(x), y)


# ---------------------------------------------------------------------------------------- export and ONNX
def test_torch_export_keeps_the_fused_op():
    if not _ext.available():
        pytest.skip(_ext.reason())
    m = torch.nn.Sequential(BSConvU(4, 8, 3, padding=1, backend="cpu"), torch.nn.ReLU(),
                            BSConvU(8, 8, 3, stride=2, padding=1, backend="cpu")).eval()
    x = torch.randn(2, 4, 9, 9)
    ep = torch.export.export(m, (x,))
    targets = [str(n.target) for n in ep.graph.nodes if n.op == "call_function"]
    assert sum("bsconv_fused.cpp_forward" in t for t in targets) == 2, targets
    with torch.no_grad():
        torch.testing.assert_close(ep.module()(x), m(x))


def test_onnx_export_emits_two_standard_convs_and_runs(tmp_path):
    onnx = pytest.importorskip("onnx")
    m = torch.nn.Sequential(BSConvU(4, 8, 3, padding=1), torch.nn.ReLU(),
                            BSConvS(8, 8, 3, stride=2, padding=1, with_bn=True, p=0.5)).eval()
    x = torch.randn(1, 4, 9, 9)
    path = tmp_path / "bsconv.onnx"
    torch.onnx.export(m, (x,), str(path), dynamo=False)
    model = onnx.load(str(path))
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("Conv") >= 4 and not [o for o in ops if "bsconv" in o.lower()], ops
    ort = pytest.importorskip("onnxruntime")
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        want = m(x)
    torch.testing.assert_close(torch.from_numpy(got), want, rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------------------------------------ GPU only
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_runs_on_the_current_stream():
    # a launch on the wrong stream would read x2 before the side stream's delayed copy lands
    for backend, device in TARGETS:
        if device != "cuda":
            continue
        x, pw, dw, b, _ = _inputs("cuda", grad=False, N=8, C_in=32, C_out=64, H=56, W=56)
        want = bsconv_u(x, pw, dw, b, padding=1, backend=backend)
        x2 = torch.zeros_like(x)
        s = torch.cuda.Stream()
        with torch.cuda.stream(s):
            torch.cuda._sleep(10**7)
            x2.copy_(x)
            got = bsconv_u(x2, pw, dw, b, padding=1, backend=backend)
        s.synchronize()
        assert torch.equal(got, want), backend


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_second_device_module():
    for backend, device in TARGETS:
        if device != "cuda":
            continue
        m = BSConvU(4, 8, 3, padding=1, backend=backend).to("cuda:1")
        x = torch.randn(2, 4, 6, 6, device="cuda:1")
        with OpRecorder() as rec:
            y = m(x)
        rec.assert_ran(backend, backward=False)
        assert y.device == torch.device("cuda:1")
        ref = bsconv_u_reference(x.double(), m.pw.weight.double(), m.dw.weight.double(), m.dw.bias.double(),
                                 padding=1)
        assert rel_err(y, ref) <= 5e-3
