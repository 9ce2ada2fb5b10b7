"""Property-based parity: random valid layer configurations on every available fused backend, against float64;
random invalid ones raise a clear error naming the argument.

Profiles (hypothesis's own option): the default "ci" profile is small and fast; `pytest tests/test_properties.py
--hypothesis-profile=deep` runs many more and larger examples. Failing examples are printed as a reproducible Case.
"""
from __future__ import annotations

import functools

import pytest
import torch

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from bsconv_fused import bsconv_u  # noqa: E402
from bsconv_fused._shapes import conv_out_size  # noqa: E402
from bsconv_fused.testing import Case, check, fused_targets  # noqa: E402

# The interpreter runs ~0.1 s per Triton program: the CI profile keeps examples few and small.
settings.register_profile("ci", max_examples=12, deadline=None, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("deep", max_examples=300, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
if getattr(settings, "_current_profile", "default") == "default":  # --hypothesis-profile=deep on the CLI wins
    settings.load_profile("ci")


# the dtypes each backend's random cases draw from
DTYPES = {"triton": (torch.float32, torch.float16), "cpu": (torch.float64, torch.float32, torch.bfloat16),
          "cuda": (torch.float32, torch.float16, torch.bfloat16)}
BACKENDS = [(name, device, DTYPES[name]) for name, device in fused_targets()]


@st.composite
def cases(draw, dtypes):
    """A valid configuration: every axis drawn independently, then sizes made large enough for one output."""
    kh, kw = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    dh, dw = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    ph, pw = draw(st.integers(0, 3)), draw(st.integers(0, 3))
    # the padded input must hold the dilated kernel: H + 2p >= d(k-1) + 1
    H = draw(st.integers(max(1, dh * (kh - 1) + 1 - 2 * ph), 10))
    W = draw(st.integers(max(1, dw * (kw - 1) + 1 - 2 * pw), 10))
    assert conv_out_size(H, kh, sh, ph, dh) >= 1 and conv_out_size(W, kw, sw, pw, dw) >= 1
    requires = tuple(draw(st.booleans()) for _ in range(5))
    return Case(
        N=draw(st.integers(1, 2)), C_in=draw(st.integers(1, 9)), C_out=draw(st.integers(1, 12)), H=H, W=W,
        k=(kh, kw), stride=(sh, sw), padding=(ph, pw), dilation=(dh, dw),
        bias=draw(st.booleans()), mid=draw(st.booleans()),
        layout=draw(st.sampled_from(["nchw", "channels_last", "sliced"])),
        grad_layout=draw(st.sampled_from(["contiguous", "transposed", "expanded"])),
        requires=requires, dtype=draw(st.sampled_from(dtypes)),
    )


@pytest.mark.skipif(not BACKENDS, reason="no fused backend here")
@pytest.mark.parametrize("backend,device,dtypes", BACKENDS, ids=[b[0] for b in BACKENDS])
def test_random_valid_configurations_match_float64(backend, device, dtypes):
    fn = functools.partial(bsconv_u, backend=backend)

    @given(case=cases(dtypes))
    def prop(case):
        if backend == "triton":
            from bsconv_fused.triton.plan import unsupported_reason
            from bsconv_fused._shapes import Geometry

            g = Geometry(case.N, case.C_in, case.C_out, case.H, case.W, *case.k, case.stride, case.padding,
                         case.dilation)
            if unsupported_reason(g):
                return  # refused up front with a reason; tested elsewhere
        check(case, fn, device, backend=backend)

    prop()


# ------------------------------------------------------------------------------------------ invalid input
def _ok():
    return dict(x=torch.randn(1, 4, 6, 6), pw=torch.randn(8, 4, 1, 1), dw=torch.randn(8, 1, 3, 3),
                bias=torch.randn(8), mid=torch.randn(8), stride=1, padding=1, dilation=1)


# each breaker returns (changes, exception type, a word the message must contain)
BREAKERS = [
    (lambda d: dict(x=d["x"][0]), ValueError, "x must be 4-D"),
    (lambda d: dict(x=torch.randn(1, 5, 6, 6)), ValueError, "C_in"),
    (lambda d: dict(x=d["x"].to(torch.int64)), TypeError, "x must have a floating dtype"),
    (lambda d: dict(pw=torch.randn(8, 4, 3, 3)), ValueError, "pw_weight"),
    (lambda d: dict(dw=torch.randn(7, 1, 3, 3)), ValueError, "dw_weight"),
    (lambda d: dict(dw=torch.randn(8, 2, 3, 3)), ValueError, "dw_weight"),
    (lambda d: dict(bias=torch.randn(9)), ValueError, "bias"),
    (lambda d: dict(mid=torch.randn(8, 1)), ValueError, "mid_bias"),
    (lambda d: dict(bias=d["bias"].double()), TypeError, "same dtype"),
    (lambda d: dict(stride=0), ValueError, "stride"),
    (lambda d: dict(stride=(1, 2, 3)), TypeError, "stride"),
    (lambda d: dict(padding=-1), ValueError, "padding"),
    (lambda d: dict(dilation=0), ValueError, "dilation"),
    (lambda d: dict(padding=True), TypeError, "padding"),
    (lambda d: dict(dw=torch.randn(8, 1, 9, 9), padding=0), ValueError, "output would be empty"),
    (lambda d: dict(x=d["x"].to("meta")), ValueError, "same device"),
]


@settings(max_examples=len(BREAKERS) * 3, deadline=None, derandomize=True)
@given(idx=st.integers(0, len(BREAKERS) - 1), backend=st.sampled_from(["auto", "torch", "triton", "cpu", "cuda"]))
def test_invalid_configurations_raise_a_clear_error(idx, backend):
    d = _ok()
    change, exc, word = BREAKERS[idx]
    d.update(change(d))
    with pytest.raises(exc, match=word):
        bsconv_u(d["x"], d["pw"], d["dw"], d["bias"], d["stride"], d["padding"], d["dilation"], mid_bias=d["mid"],
                 backend=backend)
