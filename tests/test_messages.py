"""What a user sees when something is off: the environment variable named in backend errors, fallback warnings
attributed to the user's own line (through nn.Module calls too), the module's own argument in a channel mismatch."""
from __future__ import annotations

import warnings

import pytest
import torch

import bsconv_fused
from bsconv_fused import BSConvU, BackendUnavailableError, FallbackWarning, backends, bsconv_u


def _args(C_in=4, C_out=6, dtype=torch.float32):
    x = torch.randn(1, C_in, 5, 5, dtype=dtype)
    return x, torch.randn(C_out, C_in, 1, 1, dtype=dtype), torch.randn(C_out, 1, 3, 3, dtype=dtype)


def test_backend_error_names_the_environment_variable(monkeypatch):
    x, pw, dw = _args()
    monkeypatch.setenv("BSCONV_FUSED_BACKEND", "triton")
    monkeypatch.setattr(backends, "why_not", lambda name, x, g=None: "not here (test)")
    with pytest.raises(BackendUnavailableError, match=r"BSCONV_FUSED_BACKEND=triton.*unset BSCONV_FUSED_BACKEND"):
        bsconv_u(x, pw, dw, padding=1)
    monkeypatch.delenv("BSCONV_FUSED_BACKEND")
    with pytest.raises(BackendUnavailableError) as e:  # an explicit argument: no variable to blame
        bsconv_u(x, pw, dw, padding=1, backend="triton")
    assert "BSCONV_FUSED_BACKEND" not in str(e.value)
    monkeypatch.setenv("BSCONV_FUSED_BACKEND", "fastest")
    with pytest.raises(ValueError, match="environment variable BSCONV_FUSED_BACKEND must be one of"):
        bsconv_u(x, pw, dw, padding=1)


def _fallback_warnings(fn):
    backends._warned.clear()
    with warnings.catch_warnings(record=True) as got:
        warnings.simplefilter("always")
        fn()
    return [w for w in got if issubclass(w.category, FallbackWarning)]


def test_functional_fallback_warning_points_at_the_callers_line(monkeypatch):
    # fp64 on the CPU with no fused backend able to take it: force the fallback through why_not
    monkeypatch.setattr(backends, "why_not", lambda name, x, g=None: "unavailable (test)")
    x, pw, dw = _args()
    (w,) = _fallback_warnings(lambda: bsconv_u(x, pw, dw, padding=1))
    assert w.filename == __file__, w.filename


def test_module_fallback_warning_points_at_the_users_line():
    layer = BSConvU(4, 6, kernel_size=3, padding=1, padding_mode="reflect")  # not fused: falls back with a warning
    x = torch.randn(1, 4, 5, 5)
    (w,) = _fallback_warnings(lambda: layer(x))
    assert w.filename == __file__, w.filename
    model = torch.nn.Sequential(torch.nn.Identity(), BSConvU(4, 6, kernel_size=3, padding=1, padding_mode="reflect"))
    (w,) = _fallback_warnings(lambda: model(x))
    assert w.filename == __file__, w.filename


@pytest.mark.parametrize("cls", ["BSConvU", "BSConvS"])
def test_module_channel_mismatch_names_in_channels(cls):
    layer = getattr(bsconv_fused, cls)(8, 16, kernel_size=3, padding=1)
    with pytest.raises(ValueError, match=rf"{cls}\(in_channels=8\) got an input with 3 channels"):
        layer(torch.randn(2, 3, 9, 9))
