"""The functional API: argument errors, backend choice, fallback warnings, explicit-backend errors."""
import warnings

import pytest
import torch

import bsconv_fused
from bsconv_fused import BackendUnavailableError, FallbackWarning, backends, bsconv_u, bsconv_u_dense
from bsconv_fused import bsconv_u_reference


def _inputs(dtype=torch.float32, device="cpu"):
    x = torch.randn(2, 4, 6, 6, dtype=dtype, device=device)
    pw = torch.randn(8, 4, 1, 1, dtype=dtype, device=device)
    dw = torch.randn(8, 1, 3, 3, dtype=dtype, device=device)
    b = torch.randn(8, dtype=dtype, device=device)
    return x, pw, dw, b


# ------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("mutate,exc,words", [
    (lambda a: a.update(x=a["x"][0]), ValueError, "x must be 4-D"),
    (lambda a: a.update(x=a["x"].int()), TypeError, "x must have a floating dtype"),
    (lambda a: a.update(pw_weight=a["pw_weight"][:, :3]), ValueError, "C_in=4"),
    (lambda a: a.update(pw_weight=torch.randn(8, 4, 3, 3)), ValueError, "pw_weight must have shape"),
    (lambda a: a.update(dw_weight=torch.randn(8, 2, 3, 3)), ValueError, "dw_weight must have shape"),
    (lambda a: a.update(dw_weight=torch.randn(7, 1, 3, 3)), ValueError, "dw_weight has 7 channels"),
    (lambda a: a.update(bias=torch.randn(9)), ValueError, "bias must have shape"),
    (lambda a: a.update(mid_bias=torch.randn(8, 1)), ValueError, "mid_bias must have shape"),
    (lambda a: a.update(padding=-1), ValueError, "padding must be >= 0"),
    (lambda a: a.update(stride=0), ValueError, "stride must be >= 1"),
    (lambda a: a.update(dilation=(1, 0)), ValueError, "dilation must be >= 1"),
    (lambda a: a.update(stride=(1, 2, 3)), TypeError, "stride must be an int or a pair"),
    (lambda a: a.update(padding=1.5), TypeError, "padding must be an int or a pair"),
    (lambda a: a.update(x=torch.randn(2, 4, 1, 1), padding=0), ValueError, "output would be empty"),
    (lambda a: a.update(pw_weight=a["pw_weight"].double()), TypeError, "same dtype"),
    (lambda a: a.update(x=torch.randn(2, 4, 6, 6, device="meta")), ValueError, "same device"),
    (lambda a: a.update(backend="cudnn"), ValueError, "backend must be one of"),
], ids=lambda v: v if isinstance(v, str) else "")
def test_bad_input_names_argument(mutate, exc, words):
    x, pw, dw, b = _inputs()
    args = dict(x=x, pw_weight=pw, dw_weight=dw, bias=b, padding=1)
    mutate(args)
    with pytest.raises(exc, match=words):
        bsconv_u(**args)


def test_reference_and_dense_agree():
    x, pw, dw, b = (t.double() for t in _inputs())
    for s, p, d in [(1, 1, 1), (2, 0, 1), ((1, 2), (2, 1), (2, 1))]:
        torch.testing.assert_close(bsconv_u_reference(x, pw, dw, b, s, p, d), bsconv_u_dense(x, pw, dw, b, s, p, d))


def test_mid_bias_only_inside_the_image():
    # With a zero input, the intermediate is mid_bias inside the image and 0 in the padding: a corner output of a
    # 3x3 all-ones depthwise kernel sees 4 in-image taps, an interior one 9.
    x = torch.zeros(1, 2, 5, 5, dtype=torch.float64)
    pw = torch.ones(1, 2, 1, 1, dtype=torch.float64)
    dw = torch.ones(1, 1, 3, 3, dtype=torch.float64)
    y = bsconv_u(x, pw, dw, None, 1, 1, mid_bias=torch.ones(1, dtype=torch.float64), backend="torch")
    assert y[0, 0, 0, 0] == 4 and y[0, 0, 2, 2] == 9 and y[0, 0, 0, 2] == 6


# ------------------------------------------------------------------------------------------- backends
def test_available_backends_reports_every_backend_with_reason():
    av = bsconv_fused.available_backends()
    assert set(av) == {"triton", "cuda", "cpu", "torch"}
    assert av["torch"].available
    for name, st in av.items():
        assert isinstance(st.reason, str) and st.reason, name


def test_explicit_unavailable_backend_raises_with_reason(monkeypatch):
    x, pw, dw, b = _inputs(dtype=torch.float64)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(BackendUnavailableError, match="backend 'triton' cannot run this call"):
        bsconv_u(x, pw, dw, b, backend="triton")


def test_triton_rejects_float64_explicitly(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    pytest.importorskip("triton")
    x, pw, dw, b = _inputs(dtype=torch.float64)
    with pytest.raises(BackendUnavailableError, match="supports float16, bfloat16, float32, not float64"):
        bsconv_u(x, pw, dw, b, backend="triton")


def test_auto_falls_back_with_one_warning_per_reason(monkeypatch):
    monkeypatch.setattr(backends, "_warned", set())
    # force every fused backend to be unavailable for this call
    monkeypatch.setattr(backends, "why_not",
                        lambda name, x, g=None: None if name == "torch" else f"{name} is off in this test")
    x, pw, dw, b = _inputs()
    with pytest.warns(FallbackWarning, match="cpu is off in this test"):
        y = bsconv_u(x, pw, dw, b, padding=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FallbackWarning)
        y2 = bsconv_u(x, pw, dw, b, padding=1)  # same reason: silent
    torch.testing.assert_close(y, bsconv_u_reference(x, pw, dw, b, padding=1))
    torch.testing.assert_close(y2, y)


def test_env_var_selects_backend(monkeypatch):
    x, pw, dw, b = _inputs()
    monkeypatch.setenv(backends.ENV_VAR, "torch")
    assert backends.choose("auto", x) == "torch"
    monkeypatch.setenv(backends.ENV_VAR, "bogus")
    with pytest.raises(ValueError, match=backends.ENV_VAR):
        backends.choose("auto", x)
    # an explicit per-call backend wins over the environment
    monkeypatch.setenv(backends.ENV_VAR, "cuda")
    assert backends.choose("torch", x) == "torch"
    # an impossible request from the environment names the variable
    if not torch.cuda.is_available():
        with pytest.raises(BackendUnavailableError, match=f"{backends.ENV_VAR}=cuda"):
            backends.choose("auto", x)


def test_cuda_backend_refuses_cpu_tensors_and_points_at_cpu():
    x = torch.randn(1, 2, 4, 4)
    why = backends.why_not("cuda", x)
    assert why is not None


def test_auto_can_choose_the_two_layer_path_by_cost_without_warning(monkeypatch):
    # a layer where the fused kernels are predicted slower runs the two-layer path on purpose: no FallbackWarning
    monkeypatch.setattr(backends, "why_not", lambda name, x, g=None: None)
    monkeypatch.setattr(backends, "predicted_loss", lambda name, x, g, training: "slower in this test")
    x, pw, dw, b = _inputs()
    c = backends.explain("auto", x, None)
    assert c.backend == "torch" and not c.fallback and "slower in this test" in c.reason
    with warnings.catch_warnings():
        warnings.simplefilter("error", FallbackWarning)
        assert backends.choose("auto", x) == "torch"


def test_auto_never_picks_the_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.delenv(backends.ENV_VAR, raising=False)
    x = torch.randn(1, 2, 4, 4)
    assert backends.choose("auto", x) != "triton"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_auto_picks_a_fused_backend_on_gpu():
    x = torch.randn(1, 2, 4, 4, device="cuda")
    assert backends.choose("auto", x) in ("triton", "cuda", "torch")


def test_autocast_runs_in_lower_precision_like_conv2d(triton_device):
    pytest.importorskip("triton")
    from bsconv_fused.testing import OpRecorder, rel_err, tolerance

    x, pw, dw, b = _inputs(device=triton_device)
    dtype = torch.bfloat16
    with OpRecorder() as rec, torch.autocast(triton_device, dtype=dtype):
        y = bsconv_u(x, pw, dw, b, padding=1, backend="triton")
        two_layer = bsconv_u_reference(x, pw, dw, b, padding=1)  # autocast lowers F.conv2d the same way
    assert y.dtype == two_layer.dtype == dtype
    rec.assert_ran("triton", backward=False)
    # values: autocast means "the same op on the inputs cast to bf16"; hold both against float64 of those inputs
    low = [t.to(dtype).double() for t in (x, pw, dw, b)]
    ref = bsconv_u_reference(*low, padding=1)
    assert rel_err(y, ref) <= tolerance(dtype, False, rel_err(two_layer, ref))


def test_triton_rejects_a_kernel_span_beyond_its_tile(monkeypatch):
    pytest.importorskip("triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    x = torch.randn(1, 2, 40, 40)
    pw, dw = torch.randn(4, 2, 1, 1), torch.randn(4, 1, 7, 7)
    with pytest.raises(BackendUnavailableError, match="dilated kernel spans 31x31"):
        bsconv_u(x, pw, dw, None, 1, 15, 5, backend="triton")
