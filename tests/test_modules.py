"""BSConvU / BSConvS as modules: structure, argument checks, the fused-or-fallback decision, warnings, backends.

Outputs are compared with the module's own submodules run one after the other (nn.Sequential.forward, the
reference computation) in float64 on the CPU; the fused path with backend="torch" differs only by reassociation.
Kernel correctness is not tested here (tests of the functional layer do that); a few tests at the end run the
modules through the Triton interpreter when it is enabled.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

import bsconv_fused
from bsconv_fused import backends, modules
from bsconv_fused.backends import BackendUnavailableError, FallbackWarning
from bsconv_fused.modules import BSConvS, BSConvU

TOL = dict(rtol=1e-10, atol=1e-12)


@pytest.fixture(autouse=True)
def fresh_warnings():
    """warn_once remembers reasons process-wide; forget them so each test sees its own first warning."""
    saved = set(backends._warned)
    backends._warned.clear()
    yield
    backends._warned.clear()
    backends._warned.update(saved)


def two_layer(module, x):
    return nn.Sequential.forward(module, x)


def fallback_warnings(record):
    return [w for w in record if issubclass(w.category, FallbackWarning)]


# ------------------------------------------------------------------------------------------------- structure
def test_public_exports():
    assert bsconv_fused.BSConvU is BSConvU and bsconv_fused.BSConvS is BSConvS
    assert bsconv_fused.reg_loss is modules.reg_loss


def test_bsconvu_layout_and_defaults():
    m = BSConvU(4, 6, 3)
    assert isinstance(m, nn.Sequential)
    assert [n for n, _ in m.named_children()] == ["pw", "dw"]
    assert m[0] is m.pw and m[-1] is m.dw and len(m) == 2
    assert m.pw.kernel_size == (1, 1) and m.pw.bias is None and m.pw.groups == 1
    assert m.dw.groups == 6 and m.dw.bias is not None and m.dw.padding == (0, 0) and m.dw.stride == (1, 1)
    assert m.backend == "auto"
    mb = BSConvU(4, 6, (3, 5), stride=2, padding=(1, 2), dilation=(1, 2), bias=False, with_bn=True,
                 bn_kwargs=dict(momentum=0.3, eps=1e-3))
    assert [n for n, _ in mb.named_children()] == ["pw", "bn", "dw"]
    assert mb.bn.momentum == 0.3 and mb.bn.eps == 1e-3 and mb.bn.num_features == 6
    assert mb.dw.kernel_size == (3, 5) and mb.dw.stride == (2, 2) and mb.dw.dilation == (1, 2) and mb.dw.bias is None
    assert list(mb.state_dict()) == ["pw.weight", "bn.weight", "bn.bias", "bn.running_mean", "bn.running_var",
                                     "bn.num_batches_tracked", "dw.weight"]


def test_bsconvs_layout():
    m = BSConvS(16, 8, 3, with_bn=True)
    assert [n for n, _ in m.named_children()] == ["pw1", "bn1", "pw2", "bn2", "dw"]
    assert m.bn1.num_features == 4 and m.bn2.num_features == 8
    assert [n for n, _ in BSConvS(16, 8, 3).named_children()] == ["pw1", "pw2", "dw"]
    assert "backend" not in str(list(m.state_dict()))  # the backend is not state


def test_parameter_counts_match_reference_package():
    ref_pkg = pytest.importorskip("bsconv.pytorch")
    count = lambda mod: sum(p.numel() for p in mod.parameters())  # noqa: E731
    for args, kw in [((32, 64, 3), {}), ((3, 16, 5), dict(bias=False)), ((64, 128, 3), dict(with_bn=True))]:
        assert count(BSConvU(*args, **kw)) == count(ref_pkg.BSConvU(*args, **kw))
        assert count(BSConvS(*args, **kw)) == count(ref_pkg.BSConvS(*args, **kw))
    # the formula, independent of the package: pw in*out, dw out*k*k, bias out
    assert count(BSConvU(32, 64, 3)) == 32 * 64 + 64 * 9 + 64


@pytest.mark.parametrize("name", ["BSConvU", "BSConvS"])
def test_signature_matches_reference_package(name):
    """Same positional order, names and defaults, so positional calls written for the reference keep working."""
    import inspect

    ref_pkg = pytest.importorskip("bsconv.pytorch")
    ours = inspect.signature(getattr(modules, name)).parameters
    ref = inspect.signature(getattr(ref_pkg, name)).parameters
    positional = [(n, p.default) for n, p in ours.items() if p.kind is not p.KEYWORD_ONLY]
    assert positional == [(n, p.default) for n, p in ref.items()]
    assert ours["backend"].kind is inspect.Parameter.KEYWORD_ONLY and ours["backend"].default == "auto"


def test_deepcopy_and_pickle_keep_backend_and_weights():
    import copy
    import io

    m = BSConvS(8, 6, 3, with_bn=True, backend="torch").eval()
    for clone in (copy.deepcopy(m), torch.load(io.BytesIO(_pickled(m)), weights_only=False)):
        assert clone.backend == "torch" and clone.mid_channels == m.mid_channels
        x = torch.randn(1, 8, 5, 5)
        torch.testing.assert_close(clone(x), m(x), rtol=0, atol=0)


def _pickled(module) -> bytes:
    import io

    buf = io.BytesIO()
    torch.save(module, buf)
    return buf.getvalue()


def test_repr_names_backend_and_mid_channels():
    assert "backend='auto'" in repr(BSConvU(4, 6, 3))
    r = repr(BSConvS(16, 8, 3, backend="torch"))
    assert "mid_channels=4" in r and "backend='torch'" in r and "(pw1)" in r


def test_backend_attribute_validated():
    m = BSConvU(4, 6, 3, backend="torch")
    m.backend = "triton"
    assert m.backend == "triton"
    with pytest.raises(ValueError, match="backend"):
        m.backend = "cudnn"
    with pytest.raises(ValueError, match="backend"):
        BSConvS(4, 6, 3, backend="gpu")


# ----------------------------------------------------------------------------------------------- bad arguments
@pytest.mark.parametrize("cls", [BSConvU, BSConvS])
@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(in_channels=0), ValueError, "in_channels"),
    (dict(in_channels=-3), ValueError, "in_channels"),
    (dict(in_channels=2.0), TypeError, "in_channels"),
    (dict(out_channels=0), ValueError, "out_channels"),
    (dict(kernel_size=0), ValueError, "kernel_size"),
    (dict(kernel_size=(3, 3, 3)), TypeError, "kernel_size"),
    (dict(stride=0), ValueError, "stride"),
    (dict(padding=-1), ValueError, "padding"),
    (dict(padding="full"), ValueError, "padding"),
    (dict(padding="same", stride=2), ValueError, "padding='same'"),
    (dict(dilation=0), ValueError, "dilation"),
    (dict(bias=1), TypeError, "bias"),
    (dict(padding_mode="zero"), ValueError, "padding_mode"),
    (dict(bn_kwargs=[("eps", 1e-3)]), TypeError, "bn_kwargs"),
])
def test_bad_constructor_arguments(cls, kwargs, exc, match):
    args = dict(in_channels=8, out_channels=6, kernel_size=3)
    args.update(kwargs)
    with pytest.raises(exc, match=match):
        cls(**args)


@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(p=-0.1), ValueError, r"p must be in \[0, 1\]"),
    (dict(p=1.5), ValueError, r"p must be in \[0, 1\]"),
    (dict(p=float("nan")), ValueError, r"p must be in \[0, 1\]"),
    (dict(p="0.5"), TypeError, "p must be"),
    (dict(min_mid_channels=0), ValueError, "min_mid_channels"),
])
def test_bad_bsconvs_arguments(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        BSConvS(8, 6, 3, **kwargs)


def test_bad_bn_kwargs_raise_from_batchnorm():
    with pytest.raises(TypeError):
        BSConvU(8, 6, 3, with_bn=True, bn_kwargs=dict(epsilon=1e-3))


# ---------------------------------------------------------------------------------- forward: fused path
@pytest.mark.parametrize("cls", [BSConvU, BSConvS])
@pytest.mark.parametrize("kwargs", [
    dict(kernel_size=3, padding=1),
    dict(kernel_size=(3, 5), stride=(2, 1), padding=(0, 2), dilation=(1, 2), bias=False),
    dict(kernel_size=4, stride=2, padding=1),
    dict(kernel_size=3, padding="same", dilation=2),
    dict(kernel_size=(3, 5), padding="same"),
    dict(kernel_size=5, padding="valid"),
    dict(kernel_size=1),
])
def test_fused_path_matches_two_layer(cls, kwargs):
    torch.manual_seed(0)
    m = cls(5, 7, backend="torch", **kwargs).double()
    assert m.fused_path_reason() is None
    x = torch.randn(2, 5, 9, 8, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(m(x), two_layer(m, x), **TOL)


def test_backend_is_passed_through(monkeypatch):
    seen = []
    real = modules.bsconv_u

    def spy(*args, **kwargs):
        seen.append(kwargs["backend"])
        return real(*args, **{**kwargs, "backend": "torch"})

    monkeypatch.setattr(modules, "bsconv_u", spy)
    x = torch.randn(1, 4, 5, 5)
    m = BSConvU(4, 6, 3, backend="cpu")
    m(x)
    m.backend = "triton"
    m(x)
    BSConvS(4, 6, 3)(x)
    assert seen == ["cpu", "triton", "auto"]


def test_explicit_unavailable_backend_raises_from_functional_layer():
    # The Triton kernels have no float64 path, in the interpreter and on GPUs alike: an explicit request must raise.
    m = BSConvU(4, 6, 3, backend="triton").double()
    with pytest.raises(BackendUnavailableError, match="triton"):
        m(torch.randn(1, 4, 5, 5, dtype=torch.float64))


def test_channels_last_input_keeps_its_layout():
    m = BSConvU(4, 6, 3, padding=1, backend="torch").eval()
    x = torch.randn(2, 4, 6, 6).to(memory_format=torch.channels_last)
    y = m(x)
    torch.testing.assert_close(y, two_layer(m, x.contiguous()), rtol=1e-5, atol=1e-5)  # fp32 reassociation


def test_works_inside_autocast_after_a_conv():
    """Under autocast the previous layer hands over a low-precision x while the module's weights stay fp32."""
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), BSConvU(8, 8, 3, padding=1, backend="torch"))
    x = torch.randn(1, 3, 6, 6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = net(x)
        expected = two_layer(net[1], net[0](x))
    assert y.dtype == expected.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), expected.float(), rtol=2e-2, atol=2e-2)  # bf16: 8 mantissa bits


# ------------------------------------------------------------------------------ forward: fallback and warnings
@pytest.mark.parametrize("cls", [BSConvU, BSConvS])
@pytest.mark.parametrize("padding_mode", ["reflect", "replicate", "circular"])
def test_padding_mode_falls_back_and_warns_once(cls, padding_mode, recwarn):
    torch.manual_seed(0)
    m = cls(4, 6, 3, padding=1, padding_mode=padding_mode).double()
    assert padding_mode in m.fused_path_reason()
    x = torch.randn(1, 4, 5, 6, dtype=torch.float64)
    y = m(x)
    torch.testing.assert_close(y, two_layer(m, x), rtol=0, atol=0)  # it literally runs the submodules
    first = fallback_warnings(recwarn)
    assert len(first) == 1
    assert padding_mode in str(first[0].message) and cls.__name__ in str(first[0].message)
    m(x)
    cls(4, 6, 3, padding=1, padding_mode=padding_mode)(x.float())  # same reason again: still silent
    assert len(fallback_warnings(recwarn)) == 1


@pytest.mark.parametrize("cls", [BSConvU, BSConvS])
def test_bn_training_takes_the_fused_path_without_warning(cls):
    # training-mode BN folds batch statistics (bsconv_fused.bn_stats; outputs and gradients in test_bn_train.py)
    m = cls(4, 6, 3, padding=1, with_bn=True)
    assert m.fused_path_reason() is None
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", FallbackWarning)
        m(torch.randn(2, 4, 5, 5))


def test_distinct_reasons_warn_separately(recwarn):
    x = torch.randn(1, 4, 5, 5)
    BSConvU(4, 6, 3, padding=1, padding_mode="reflect")(x)
    BSConvU(4, 6, 4, padding="same")(x)
    BSConvU(4, 6, 3, padding=1, padding_mode="reflect")(x)
    msgs = [str(w.message) for w in fallback_warnings(recwarn)]
    assert len(msgs) == 2 and "reflect" in msgs[0] and "asymmetric" in msgs[1]


def test_backend_torch_does_not_warn_about_module_fallbacks(recwarn):
    x = torch.randn(1, 4, 5, 5)
    BSConvU(4, 6, 3, padding=1, padding_mode="reflect", backend="torch")(x)
    BSConvS(4, 6, 3, padding=1, with_bn=True, backend="torch")(x)
    assert not fallback_warnings(recwarn)


def test_fused_path_reason_in_both_modes():
    # BN folds in either mode (running statistics in eval, batch statistics in training)
    m = BSConvU(4, 6, 3, with_bn=True)
    assert m.fused_path_reason() is None
    m.eval()
    assert m.fused_path_reason() is None
    m.bn.train()  # a BN put back in training on its own (e.g. by a fine-tuning script) is honoured by the fold
    assert m.fused_path_reason() is None
    m.bn = nn.Identity()  # something that is not a BatchNorm in its place is not folded
    assert "bn is a Identity" in m.fused_path_reason()


def test_asymmetric_same_padding_falls_back_exactly():
    m = BSConvU(4, 6, 4, padding="same", backend="torch").double()
    assert "asymmetric" in m.fused_path_reason()
    x = torch.randn(1, 4, 7, 6, dtype=torch.float64)
    y = m(x)
    assert y.shape == (1, 6, 7, 6)
    torch.testing.assert_close(y, two_layer(m, x), rtol=0, atol=0)


def test_forward_hooks_on_submodules_force_the_two_layer_path():
    m = BSConvS(8, 6, 3, padding=1, backend="torch")
    calls = []
    handle = m.pw2.register_forward_hook(lambda mod, inp, out: calls.append(out.shape))
    assert "pw2" in m.fused_path_reason()
    m(torch.randn(1, 8, 5, 5))
    assert calls == [(1, 6, 5, 5)]
    handle.remove()
    assert m.fused_path_reason() is None


def test_hooks_on_the_layer_itself_still_fire():
    m = BSConvU(4, 6, 3, backend="torch")
    seen = []
    m.register_forward_hook(lambda mod, inp, out: seen.append(out.shape))
    assert m.fused_path_reason() is None
    m(torch.randn(1, 4, 5, 5))
    assert seen == [(1, 6, 3, 3)]


# ------------------------------------------------------------------------------------------- torch.compile
@pytest.mark.parametrize("backend", ["torch", "auto"])
def test_compile_fullgraph_fused_and_fallback(backend):
    """The fold, the merge and the fallback decision trace without graph breaks (aot_eager: the CPU has no Inductor
    budget here; graph breaks are a Dynamo matter, independent of the compiler backend)."""
    torch.manual_seed(0)
    m = BSConvS(8, 8, 3, padding=1, with_bn=True, p=0.5, backend=backend)
    compiled = torch.compile(m, fullgraph=True, backend="aot_eager")
    x = torch.randn(2, 8, 6, 6, requires_grad=True)
    compiled(x).sum().backward()  # training mode: the fused path folds the BN batch statistics
    m.eval()
    y = compiled(x)  # eval mode: recompiles on the changed `training` flag, fused path
    y.sum().backward()
    torch.testing.assert_close(y, two_layer(m, x), rtol=1e-5, atol=1e-5)  # fp32 reassociation of the fold
    assert m.pw1.weight.grad is not None and m.bn1.weight.grad is not None


# ---------------------------------------------------------------------- through the Triton kernels (or interpreter)
@pytest.mark.parametrize("cls,kwargs", [
    (BSConvU, dict(with_bn=True)),
    (BSConvS, dict(with_bn=True, p=0.5)),
])
def test_modules_through_triton_backend(cls, kwargs, triton_device, monkeypatch):
    """Eval-mode BN fold (mid_bias) and BSConvS merge through the real kernels: output and every gradient."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)  # the launcher follows it: full fp32 dots
    torch.manual_seed(0)
    m = cls(16, 16, 3, padding=1, backend="triton", **kwargs)
    with torch.no_grad():
        for bn in (mod for mod in m.modules() if isinstance(mod, nn.BatchNorm2d)):
            bn.running_mean.normal_()
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.normal_()
            bn.bias.normal_()
    m.eval()
    assert m.fused_path_reason() is None
    ref = cls(16, 16, 3, padding=1, backend="torch", **kwargs).double().eval()
    ref.load_state_dict(m.state_dict())
    m.to(triton_device)
    x64 = torch.randn(1, 16, 6, 5, dtype=torch.float64, requires_grad=True)
    x = x64.detach().float().to(triton_device).requires_grad_()
    y = m(x)
    y_ref = two_layer(ref, x64)
    g = torch.randn_like(y_ref)
    (y * g.float().to(triton_device)).sum().backward()
    (y_ref * g).sum().backward()
    # fp32 kernel vs a float64 reference; reductions of length <= 16 * 9 (x 30 pixels for weight gradients) with
    # O(1) data: fp32 rounding stays below 1e-4; 1e-3 leaves room for accumulation order, not for a wrong fold.
    tol = dict(rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(y.double().cpu(), y_ref, **tol)
    torch.testing.assert_close(x.grad.double().cpu(), x64.grad, **tol)
    for (name, p), p_ref in zip(m.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad.double().cpu(), p_ref.grad, **tol, msg=lambda s, n=name: f"{n}: {s}")
