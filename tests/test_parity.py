"""Every fused backend against the float64 reference: y and every gradient, over one shared coverage list.

One parametrized suite for all backends (bsconv_fused.testing.check is the oracle and the tolerance rule):
- triton: the Triton kernels, through the interpreter on CPU tensors without a GPU (every forward variant pinned in
  turn), compiled on CUDA tensors with one;
- cpu: the compiled extension's CPU kernels (float64 by default: the tightest check of the kernel logic);
- cuda: the compiled extension's CUDA kernels (GPU only).
Every check asserts that the backend's own ops ran (and, for Triton, launched kernels): a call routed to the
two-layer path fails here. A backend missing on this machine skips with the reason.
"""
from __future__ import annotations

import functools

import pytest
import torch

from bsconv_fused import _ext, bsconv_u
from bsconv_fused.backends import available_backends, interpreting
from bsconv_fused.testing import KERNELS, STRIDE_PADDING_DILATION, Case, check

try:
    from bsconv_fused.triton.plan import FORWARD_VARIANTS
except ImportError:  # no Triton
    FORWARD_VARIANTS = ()
# the backward plan each Triton target pins (BSCONV_FUSED_TRITON_BWD), paired with the forward variants so that
# every backward path runs the whole suite without multiplying it: the cost model's choice, the fused dx + d_pw
# launch (wherever C_out fits it), the split dx and d_pw launches
BACKWARD_PINS = ("", "fused", "split")


def _targets():
    """(id, backend, device, default dtype, forward variant or None, backward plan pin or None)."""
    out = []
    for i, v in enumerate(FORWARD_VARIANTS or ("",)):
        b = BACKWARD_PINS[i % len(BACKWARD_PINS)] if v else ""
        tid = (f"triton-{v}" if v else "triton") + (f"-bwd_{b}" if b else "")
        out.append((tid, "triton", "cuda" if torch.cuda.is_available() else "cpu", torch.float32, v or None, b or None))
    out.append(("cpu", "cpu", "cpu", torch.float64, None, None))
    out.append(("cuda", "cuda", "cuda", torch.float32, None, None))
    return out


@pytest.fixture(params=_targets(), ids=lambda t: t[0])
def target(request, monkeypatch):
    tid, backend, device, dtype, variant, bwd = request.param
    status = available_backends()[backend]
    if not status.available:
        pytest.skip(f"{backend}: {status.reason}")
    if backend == "triton" and device == "cpu" and not interpreting():
        pytest.skip("no GPU and TRITON_INTERPRET is not 1")
    if backend == "cuda" and not (torch.cuda.is_available() and _ext.has_cuda_kernels()):
        pytest.skip("needs a GPU and the extension's CUDA kernels")
    if variant:
        monkeypatch.setenv("BSCONV_FUSED_TRITON_FWD", variant)
    if bwd:
        monkeypatch.setenv("BSCONV_FUSED_TRITON_BWD", bwd)
    if device.startswith("cuda"):
        # fp32 on GPUs is checked in strict fp32 here (the kernels follow cuDNN's allow_tf32, which PyTorch turns on
        # by default); test_tf32 checks the TF32 mode with its own tolerance
        monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    return backend, device, dtype


def run(target, **case):
    backend, device, dtype = target
    case.setdefault("dtype", dtype)
    return check(Case(**case), functools.partial(bsconv_u, backend=backend), device, backend=backend)


@pytest.mark.parametrize("k", KERNELS, ids=lambda k: f"k{k[0]}x{k[1]}")
def test_kernel_sizes(k, target):
    run(target, k=k, padding=(k[0] // 2, k[1] // 2), H=8, W=9)


@pytest.mark.parametrize("stride,padding,dilation", STRIDE_PADDING_DILATION, ids=str)
def test_stride_padding_dilation(stride, padding, dilation, target):
    run(target, stride=stride, padding=padding, dilation=dilation, H=11, W=10)


def test_output_larger_than_input(target):
    # 1x1 depthwise with padding: the output grows past the input, d_bias must still see every output pixel
    run(target, k=(1, 1), padding=(2, 3), H=5, W=4)


@pytest.mark.parametrize("bias,mid", [(False, False), (True, False), (False, True), (True, True)])
def test_bias_and_mid_bias(bias, mid, target):
    run(target, bias=bias, mid=mid)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64], ids=str)
@pytest.mark.parametrize("layout", ["nchw", "channels_last", "sliced"])
def test_dtypes_and_layouts(dtype, layout, target):
    backend = target[0]
    if dtype == torch.float64 and backend != "cpu":
        pytest.skip(f"{backend} runs fp16, bf16 and fp32 (float64 takes the two-layer path on GPUs)")
    run(target, dtype=dtype, layout=layout, C_in=6, C_out=18, H=7, W=9)


@pytest.mark.parametrize("grad_layout", ["transposed", "expanded"])
def test_non_contiguous_grad_output(grad_layout, target):
    run(target, grad_layout=grad_layout)


@pytest.mark.parametrize("shape", [
    dict(N=1, C_in=3, C_out=16, H=13, W=7),  # C_in=3, odd sizes
    dict(N=3, C_in=70, C_out=40, H=5, W=6),  # several C_in and C_out blocks in every kernel
    dict(N=2, C_in=17, C_out=9, H=1, W=12, k=(1, 3), padding=(0, 1)),  # a one-row image
    dict(N=1, C_in=1, C_out=1, H=6, W=5),  # one channel
    # two C_in blocks in the fused dx + d_pw launch (its blocks are up to 128 wide), with d_mid from block 0
    dict(N=2, C_in=140, C_out=24, H=5, W=7, mid=True),
], ids=["cin3", "multiblock", "one_row", "one_channel", "fused_ci_blocks"])
def test_odd_shapes(shape, target):
    run(target, **shape)


@pytest.mark.parametrize("requires", [
    (True, False, False, False, False),
    (False, True, False, False, False),
    (False, False, True, False, False),
    (False, False, False, True, True),
    (False, True, True, False, False),
    (False, False, False, False, True),
], ids=["dx", "dpw", "ddw", "biases", "weights", "dmid"])
def test_partial_gradients(requires, target):
    run(target, requires=requires)


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_tf32(layout, target, monkeypatch):
    # PyTorch's default for convolutions on GPUs: the fused fp32 GEMMs then run on TF32 tensor cores too, and the
    # tolerance rule follows (the two-layer path's own TF32 error, TOLERANCE[(float32, True)])
    if not target[1].startswith("cuda"):
        pytest.skip("TF32 exists on GPUs only")
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)
    run(target, dtype=torch.float32, layout=layout, C_in=40, C_out=72, H=13, W=11)


def test_no_gradient_at_all(target):
    # inference: nothing requires grad, only the forward op runs
    run(target, requires=(False,) * 5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU (realistic sizes are too slow for the interpreter)")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=str)
@pytest.mark.parametrize("shape", [
    dict(N=8, C_in=64, C_out=128, H=56, W=56, k=(3, 3), padding=(1, 1)),
    dict(N=8, C_in=128, C_out=256, H=28, W=28, k=(3, 3), stride=(2, 2), padding=(1, 1)),
    dict(N=4, C_in=512, C_out=512, H=7, W=7, k=(5, 5), padding=(2, 2)),
    dict(N=2, C_in=32, C_out=64, H=112, W=112, k=(3, 3), padding=(1, 1), layout="channels_last"),
], ids=["64-128@56", "128-256@28s2", "512@7k5", "32-64@112cl"])
def test_realistic_sizes_on_gpu(shape, dtype, target):
    if target[1] != "cuda":
        pytest.skip("GPU backends only")
    run(target, dtype=dtype, **shape)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_second_device(target):
    backend, device, dtype = target
    if device != "cuda":
        pytest.skip("GPU backends only")
    check(Case(dtype=torch.float16), functools.partial(bsconv_u, backend=backend), "cuda:1", backend=backend)


def test_64bit_offsets(target):
    # N=3 with a batch stride of 2**30 + 64: the stride fits in an int32 kernel argument (so no compiler widens it
    # by itself), but image 2 starts 2**31 + 128 elements into the storage: any offset product computed in 32 bits
    # lands elsewhere (or faults). torch.empty reserves the 4 GiB lazily: only the pages of the three images (and
    # what the kernels touch) are ever committed on the CPU.
    backend, device, _ = target
    if device != "cpu" and torch.cuda.mem_get_info(torch.device(device))[0] < 6 * 2**30:
        pytest.skip("needs 4 GiB of free GPU memory")
    N, C_in, C_out, H, W = 3, 4, 16, 3, 5
    sxn = 2**30 + 64
    store = torch.empty((N - 1) * sxn + C_in * H * W, dtype=torch.float16, device=device)
    x = store.as_strided((N, C_in, H, W), (sxn, H * W, W, 1))
    with torch.no_grad():
        for n in range(N):
            x[n].copy_(torch.randn(C_in, H, W))
    x.requires_grad_(True)
    pw = torch.randn(C_out, C_in, 1, 1, dtype=torch.float16, device=device, requires_grad=True)
    dw = torch.randn(C_out, 1, 3, 3, dtype=torch.float16, device=device, requires_grad=True)
    y = bsconv_u(x, pw, dw, None, 1, 1, backend=backend)
    xr, pwr, dwr = (t.detach().double().requires_grad_() for t in (x, pw, dw))
    ref = bsconv_u(xr, pwr, dwr, None, 1, 1, backend="torch")
    gy = torch.randn_like(y)
    g = torch.autograd.grad(y, [x, pw, dw], gy)
    rg = torch.autograd.grad(ref, [xr, pwr, dwr], gy.double())
    # fp16 in, one rounding of each result (fp32 accumulation over 4 channels x 9 taps): 4e-3 of max|ref|
    for name, a, b in [("y", y, ref), ("dx", g[0], rg[0]), ("dpw", g[1], rg[1]), ("ddw", g[2], rg[2])]:
        err = (a.double() - b).abs().max().item() / max(1.0, b.abs().max().item())
        assert err <= 4e-3, (name, err)
    del store
