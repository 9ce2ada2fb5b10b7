"""Training-mode BatchNorm folded into the fused op (bsconv_fused.bn_stats): outputs, every gradient and the running
statistics against the two-layer path with nn.BatchNorm2d in training mode, over several optimizer steps.

Oracles: the module's own submodules run one after the other (nn.Sequential.forward: BatchNorm2d computes the batch
statistics of the stored intermediate) in float64, and a direct float64 mean/covariance for the statistics.
Every test of the fused math names its backend ("triton" through the interpreter, or the extension's CPU kernels)
and checks that the fused op really ran (its autograd node), with FallbackWarning turned into an error.
"""
from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn

from bsconv_fused import FallbackWarning, backends
from bsconv_fused.bn_stats import input_moments
from bsconv_fused.modules import BSConvS, BSConvU
from module_helpers import randomize

# the extension's backend; the lead renames "cuda" (which also runs the extension's CPU kernels) to "cpu"
EXT = "cpu" if "cpu" in backends.BACKENDS else "cuda"
FUSED_NODES = ("cpp_forward", "triton_forward")
# float64 end to end: the fold reassociates the BN (W mean_x, w^T Cov w instead of statistics of t) and the fused
# kernels sum in another order, so a few hundred ulps on O(1)-O(10) values after three SGD steps.
TOL64 = dict(rtol=1e-9, atol=1e-10)


def two_layer(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return nn.Sequential.forward(module, x)


def assert_fused(y: torch.Tensor) -> None:
    name = y.grad_fn.name() if y.grad_fn is not None else "no grad_fn"
    assert any(n in name for n in FUSED_NODES), f"the fused op did not run (autograd node {name})"


def make(kind: str, c_in=10, c_out=7, *, backend=EXT, momentum=0.1, affine=True, seed=0, **kw):
    bn_kwargs = dict(momentum=momentum, affine=affine, eps=1e-3)
    kw.setdefault("padding", 1)
    if kind == "U":
        m = BSConvU(c_in, c_out, 3, with_bn=True, bn_kwargs=bn_kwargs, backend=backend, **kw)
    else:
        m = BSConvS(c_in, c_out, 3, with_bn=True, bn_kwargs=bn_kwargs, p=0.5, backend=backend, **kw)
    return randomize(m.double(), seed=seed).train()


def layout(x: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "nchw":
        return x
    if kind == "channels_last":
        return x.contiguous(memory_format=torch.channels_last)
    # a sliced, non-contiguous view with the same values
    big = torch.zeros(x.shape[0], x.shape[1] + 3, x.shape[2], x.shape[3] * 2, dtype=x.dtype)
    big[:, 1:1 + x.shape[1], :, ::2] = x
    return big[:, 1:1 + x.shape[1], :, ::2]


def batches(steps: int, shape, offset: float = 3.0, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g, dtype=torch.float64) * 2 + offset for _ in range(steps)]


def train_steps(model, xs, grad_outs, fused: bool, fmt: str = "nchw"):
    """SGD steps with the given upstream gradients; returns outputs, x gradients and a state snapshot per step."""
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    out = []
    for x, g in zip(xs, grad_outs):
        x = layout(x.detach().clone(), fmt).requires_grad_()
        opt.zero_grad(set_to_none=True)
        if fused:
            with warnings.catch_warnings():
                warnings.simplefilter("error", FallbackWarning)
                y = model(x)
            assert_fused(y)
        else:
            y = two_layer(model, x)
        (y * g).sum().backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters()}
        opt.step()
        out.append((y.detach(), x.grad.clone(), grads, {k: v.clone() for k, v in model.state_dict().items()}))
    return out


def compare_runs(fused_run, ref_run, tol):
    for step, ((y, gx, gp, sd), (y_r, gx_r, gp_r, sd_r)) in enumerate(zip(fused_run, ref_run)):
        torch.testing.assert_close(y, y_r, **tol, msg=lambda s, i=step: f"step {i} output: {s}")
        torch.testing.assert_close(gx, gx_r, **tol, msg=lambda s, i=step: f"step {i} grad x: {s}")
        assert gp.keys() == gp_r.keys()
        for n in gp:
            torch.testing.assert_close(gp[n], gp_r[n], **tol, msg=lambda s, i=step, n=n: f"step {i} grad {n}: {s}")
        assert sd.keys() == sd_r.keys()
        for k in sd:
            if k.endswith("num_batches_tracked"):
                assert int(sd[k]) == int(sd_r[k]), k
            else:
                torch.testing.assert_close(sd[k], sd_r[k], **tol, msg=lambda s, i=step, k=k: f"step {i} {k}: {s}")


# --------------------------------------------------------------------------------- the statistics themselves
@pytest.mark.parametrize("fmt", ["nchw", "channels_last", "sliced"])
def test_moments_match_float64_definition(fmt):
    x = layout(torch.randn(3, 5, 4, 6, dtype=torch.float64) * 3 + 2, fmt)
    mean, cov, count = input_moments(x)
    flat = x.permute(1, 0, 2, 3).reshape(5, -1)
    ref_mean = flat.mean(1)
    ref_cov = (flat - ref_mean[:, None]) @ (flat - ref_mean[:, None]).T / flat.shape[1]
    torch.testing.assert_close(mean, ref_mean, rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(cov, ref_cov, rtol=1e-12, atol=1e-13)
    assert float(count) == flat.shape[1]


@pytest.mark.parametrize("fmt", ["nchw", "channels_last", "sliced"])
def test_moments_backward_gradcheck(fmt):
    x = layout(torch.randn(2, 3, 3, 4, dtype=torch.float64) + 1, fmt).requires_grad_()
    assert torch.autograd.gradcheck(lambda t: input_moments(t)[:2], (x,))


def test_moments_in_float32_survive_a_large_offset():
    """Values 1e3 +- 1: the one-pass E[x x^T] - mean mean^T in fp32 loses every digit of the covariance (shown
    below), the centered two-pass computation keeps it to fp32 rounding of the centered values."""
    g = torch.Generator().manual_seed(3)
    x64 = torch.randn(4, 6, 8, 8, generator=g, dtype=torch.float64) + 1e3
    x = x64.float()
    _, cov, _ = input_moments(x)
    _, cov64, _ = input_moments(x.double())  # the same fp32 values, in float64
    assert cov.dtype == torch.float32
    torch.testing.assert_close(cov.double(), cov64, rtol=1e-5, atol=1e-5)
    flat = x.permute(1, 0, 2, 3).reshape(6, -1)
    mean = flat.mean(1)
    naive = flat @ flat.T / flat.shape[1] - mean[:, None] * mean[None, :]
    assert (naive.double() - cov64).abs().max() > 1e-2  # the test data really defeats the naive formula


# -------------------------------------------------------------------- against the two-layer path, over steps
@pytest.mark.parametrize("kind", ["U", "S"])
@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize("affine", [True, False])
def test_train_steps_match_two_layer(kind, momentum, affine):
    fused = make(kind, momentum=momentum, affine=affine)
    ref = copy.deepcopy(fused)
    xs = batches(3, (3, 10, 6, 7))
    y0 = two_layer(copy.deepcopy(ref), xs[0])
    gs = [torch.randn(y0.shape, generator=torch.Generator().manual_seed(10 + i), dtype=torch.float64)
          for i in range(3)]
    compare_runs(train_steps(fused, xs, gs, True), train_steps(ref, xs, gs, False), TOL64)
    assert int(fused[1].num_batches_tracked) == 7 + 3  # randomize() set 7


@pytest.mark.parametrize("kind", ["U", "S"])
@pytest.mark.parametrize("fmt", ["channels_last", "sliced"])
def test_train_steps_layouts(kind, fmt):
    fused = make(kind, stride=2)
    ref = copy.deepcopy(fused)
    xs = batches(2, (2, 10, 7, 6))
    y0 = two_layer(copy.deepcopy(ref), xs[0])
    gs = [torch.randn_like(y0) for _ in range(2)]
    compare_runs(train_steps(fused, xs, gs, True, fmt), train_steps(ref, xs, gs, False, fmt), TOL64)


@pytest.mark.parametrize("bn1_train", [True, False])
def test_bsconvs_mixed_modes(bn1_train):
    """bn1 and bn2 in different modes: the fold takes the statistics from u (bn1 on batch stats) or from x."""
    fused = make("S")
    fused.bn1.train(bn1_train)
    fused.bn2.train(not bn1_train)
    ref = copy.deepcopy(fused)
    xs = batches(2, (2, 10, 5, 5))
    gs = [torch.randn(2, 7, 5, 5, dtype=torch.float64) for _ in range(2)]
    compare_runs(train_steps(fused, xs, gs, True), train_steps(ref, xs, gs, False), TOL64)


@pytest.mark.parametrize("kind", ["U", "S"])
def test_track_running_stats_false_fuses_with_batch_stats_in_eval(kind):
    cls = BSConvU if kind == "U" else BSConvS
    m = cls(8, 6, 3, padding=1, with_bn=True, bn_kwargs=dict(track_running_stats=False), backend=EXT).double()
    m.eval()
    assert m.fused_path_reason() is None
    x = torch.randn(2, 8, 5, 5, dtype=torch.float64, requires_grad=True) * 3 + 1
    y = m(x)
    assert_fused(y)
    torch.testing.assert_close(y, two_layer(m, x), **TOL64)


def test_float32_against_float64_two_layer_with_offset():
    """fp32 fused training step (statistics in fp32, centered) against the float64 two-layer path, x = 50 +- 2."""
    m64 = make("U", 16, 12)
    m32 = copy.deepcopy(m64).float()
    x = (torch.randn(4, 16, 8, 8, dtype=torch.float64) * 2 + 50).float().double()
    g = torch.randn(4, 12, 8, 8, dtype=torch.float64)
    x32 = x.float().requires_grad_()
    y = m32(x32)
    assert_fused(y)
    (y * g.float()).sum().backward()
    x64 = x.clone().requires_grad_()
    y_ref = two_layer(m64, x64)
    (y_ref * g).sum().backward()
    # BN output is O(1) whatever the offset; fp32 statistics of 256 values per channel with an offset of 25 sigma:
    # relative rounding ~1e-6 * 25 in the centered values; 1e-3 is far below a wrong fold (errors O(0.1-1)).
    tol = dict(rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(y.double(), y_ref, **tol)
    torch.testing.assert_close(x32.grad.double(), x64.grad, **tol)
    for (n, p), p_ref in zip(m32.named_parameters(), m64.parameters()):
        scale = p_ref.grad.abs().max().clamp(min=1)
        torch.testing.assert_close(p.grad.double() / scale, p_ref.grad / scale, **tol, msg=lambda s, n=n: f"{n}: {s}")
    torch.testing.assert_close(m32.bn.running_mean.double(), m64.bn.running_mean, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(m32.bn.running_var.double(), m64.bn.running_var, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kind", ["U", "S"])
def test_one_value_per_channel_raises_like_batchnorm(kind):
    m = make(kind)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        m(torch.randn(1, 10, 1, 1, dtype=torch.float64))


def test_syncbatchnorm_without_process_group_uses_local_statistics():
    m = make("U")
    m = nn.SyncBatchNorm.convert_sync_batchnorm(m)
    assert isinstance(m.bn, nn.SyncBatchNorm) and m.fused_path_reason() is None
    ref = copy.deepcopy(m)
    ref.bn = copy.deepcopy(make("U").bn)
    ref.bn.load_state_dict(m.bn.state_dict())
    x = batches(1, (2, 10, 5, 5))[0].requires_grad_()
    y = m(x)
    assert_fused(y)
    torch.testing.assert_close(y, two_layer(ref, x), **TOL64)
    torch.testing.assert_close(m.bn.running_var, ref.bn.running_var, **TOL64)


@pytest.mark.parametrize("kind", ["U", "S"])
def test_train_step_through_triton(kind, triton_device, monkeypatch):
    """The same fold through the Triton kernels (interpreter on the CPU): fp32 against the float64 two-layer path."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    m64 = make(kind, 8, 8, backend="triton")
    m = copy.deepcopy(m64).float().to(triton_device)
    x = batches(1, (2, 8, 5, 4))[0]
    g = torch.randn(2, 8, 5, 4, dtype=torch.float64)
    xf = x.float().to(triton_device).requires_grad_()
    with warnings.catch_warnings():
        warnings.simplefilter("error", FallbackWarning)
        y = m(xf)
    assert_fused(y)
    assert "triton" in y.grad_fn.name()
    (y * g.float().to(triton_device)).sum().backward()
    x64 = x.clone().requires_grad_()
    y_ref = two_layer(m64, x64)
    (y_ref * g).sum().backward()
    tol = dict(rtol=1e-3, atol=1e-3)  # fp32 kernels, reductions of <= 8 * 9 * 40 terms of O(1) values
    torch.testing.assert_close(y.double().cpu(), y_ref, **tol)
    torch.testing.assert_close(xf.grad.double().cpu(), x64.grad, **tol)
    for (n, p), p_ref in zip(m.named_parameters(), m64.parameters()):
        scale = p_ref.grad.abs().max().clamp(min=1)
        torch.testing.assert_close(p.grad.double().cpu() / scale, p_ref.grad / scale, **tol,
                                   msg=lambda s, n=n: f"{n}: {s}")


@pytest.mark.parametrize("kind", ["U", "S"])
def test_bfloat16_train_step_against_float64(kind):
    """bf16 parameters and input: the fold and the statistics run in fp32, the op in bf16 (fp32 accumulation)."""
    m64 = make(kind, 16, 8)
    m16 = copy.deepcopy(m64).to(torch.bfloat16)
    x = batches(1, (2, 16, 6, 6))[0].to(torch.bfloat16).double()  # values representable in bf16
    g = torch.randn(2, 8, 6, 6, dtype=torch.float64)
    x16 = x.to(torch.bfloat16).requires_grad_()
    y = m16(x16)
    assert_fused(y)
    assert y.dtype == torch.bfloat16
    (y * g.to(torch.bfloat16)).sum().backward()
    x64 = x.clone().requires_grad_()
    y_ref = two_layer(m64, x64)
    (y_ref * g).sum().backward()
    # bf16 keeps 8 bits (eps 7.8e-3) and the weights are rounded to bf16 (m64 keeps them exact): compare at a few
    # bf16 ulps of the outputs and gradients, normalised by each tensor's largest entry (a wrong fold is off by O(1))
    def close(a, b, what):
        scale = b.abs().max().clamp(min=1)
        torch.testing.assert_close(a.double() / scale, b / scale, rtol=0, atol=6e-2, msg=lambda s: f"{what}: {s}")

    close(y, y_ref, "output")
    close(x16.grad, x64.grad, "grad x")
    for (n, p), p_ref in zip(m16.named_parameters(), m64.parameters()):
        if p_ref.grad.abs().max() > 1e-6:  # BSConvS's bn1.bias: true gradient 0 (bn2 removes constants)
            close(p.grad, p_ref.grad, n)
    torch.testing.assert_close(m16[1].running_var.double(), m64[1].running_var, rtol=2e-2, atol=2e-2)
