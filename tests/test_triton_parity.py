"""Triton backend: outputs and every gradient against the float64 reference, over the coverage of issue 2.

Without a GPU these run the kernels in the Triton interpreter (about 0.1 s per program), so every case is small:
a handful of programs each. On a GPU the same cases run the compiled kernels on CUDA tensors.
"""
import functools

import pytest
import torch

from bsconv_fused import bsconv_u
from parity import Case, KERNELS, STRIDE_PADDING_DILATION, check

triton = pytest.importorskip("triton")

fused = functools.partial(bsconv_u, backend="triton")


@pytest.fixture(params=["separable", "flat"], autouse=True)
def forward_variant(request, monkeypatch):
    """Every case runs through both forward kernels (the plan would pick one per shape)."""
    monkeypatch.setenv("BSCONV_FUSED_TRITON_FWD", request.param)
    return request.param



@pytest.mark.parametrize("k", KERNELS, ids=lambda k: f"k{k[0]}x{k[1]}")
def test_kernel_sizes(k, triton_device):
    check(Case(k=k, padding=(k[0] // 2, k[1] // 2), H=8, W=9), fused, triton_device)


@pytest.mark.parametrize("stride,padding,dilation", STRIDE_PADDING_DILATION, ids=str)
def test_stride_padding_dilation(stride, padding, dilation, triton_device):
    check(Case(stride=stride, padding=padding, dilation=dilation, H=11, W=10), fused, triton_device)


def test_output_larger_than_input(triton_device):
    # 1x1 depthwise with padding: the output grows past the input, d_bias must still see every output pixel
    check(Case(k=(1, 1), padding=(2, 3), H=5, W=4), fused, triton_device)


@pytest.mark.parametrize("bias,mid", [(False, False), (True, False), (False, True), (True, True)])
def test_bias_and_mid_bias(bias, mid, triton_device):
    check(Case(bias=bias, mid=mid), fused, triton_device)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("layout", ["nchw", "channels_last", "sliced"])
def test_dtypes_and_layouts(dtype, layout, triton_device):
    check(Case(dtype=dtype, layout=layout, C_in=6, C_out=18, H=7, W=9), fused, triton_device)


@pytest.mark.parametrize("grad_layout", ["transposed", "expanded"])
def test_non_contiguous_grad_output(grad_layout, triton_device):
    check(Case(grad_layout=grad_layout), fused, triton_device)


@pytest.mark.parametrize("shape", [
    dict(N=1, C_in=3, C_out=16, H=13, W=7),  # C_in=3, odd sizes
    dict(N=3, C_in=70, C_out=40, H=5, W=6),  # several C_in and C_out blocks in every kernel
    dict(N=2, C_in=17, C_out=9, H=1, W=12, k=(1, 3), padding=(0, 1)),  # a one-row image
], ids=["cin3", "multiblock", "one_row"])
def test_odd_shapes(shape, triton_device):
    check(Case(**shape), fused, triton_device)


@pytest.mark.parametrize("requires", [
    (True, False, False, False, False),
    (False, True, False, False, False),
    (False, False, True, False, False),
    (False, False, False, True, True),
    (False, True, True, False, False),
], ids=["dx", "dpw", "ddw", "biases", "weights"])
def test_partial_gradients(requires, triton_device):
    check(Case(requires=requires), fused, triton_device)


def _available_ram() -> int:
    """Bytes the kernel reports as available (MemAvailable), or 0 where it cannot be read (the test then skips)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def test_64bit_offsets(triton_device):
    # the second image starts 2**31 elements into the storage: any 32-bit offset arithmetic lands elsewhere
    if triton_device == "cuda" and torch.cuda.get_device_properties(0).total_memory < 12 * 2**30:
        pytest.skip("needs a 4 GiB buffer")
    if triton_device == "cpu" and _available_ram() < 12 * 2**30:
        # the interpreter works on the 4 GiB buffer on the host; on a machine near its limit that is an OOM kill
        pytest.skip(f"needs 12 GiB of available RAM for a 4 GiB buffer, {_available_ram() / 2**30:.1f} GiB available")
    C_in, C_out, H, W = 4, 16, 3, 5
    off = 2**31
    store = torch.zeros(off + C_in * H * W, dtype=torch.float16, device=triton_device)
    x = store.as_strided((2, C_in, H, W), (off, H * W, W, 1))
    x[0].copy_(torch.randn(C_in, H, W))
    x[1].copy_(torch.randn(C_in, H, W))
    pw = torch.randn(C_out, C_in, 1, 1, dtype=torch.float16, device=triton_device, requires_grad=True)
    dw = torch.randn(C_out, 1, 3, 3, dtype=torch.float16, device=triton_device, requires_grad=True)
    y = bsconv_u(x, pw, dw, None, 1, 1, backend="triton")
    ref = bsconv_u(x.double(), pw.double(), dw.double(), None, 1, 1, backend="torch")
    assert (y.double() - ref).abs().max().item() <= 4e-3 * max(1.0, ref.abs().max().item())
    gy = torch.randn_like(y)
    g = torch.autograd.grad(y, [pw, dw], gy)
    rg = torch.autograd.grad(ref, [pw, dw], gy.double())
    for a, b in zip(g, rg):
        assert (a.double() - b).abs().max().item() <= 4e-3 * max(1.0, b.abs().max().item())
    del store


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU (realistic sizes are too slow for the interpreter)")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=str)
@pytest.mark.parametrize("shape", [
    dict(N=8, C_in=64, C_out=128, H=56, W=56, k=(3, 3), padding=(1, 1)),
    dict(N=8, C_in=128, C_out=256, H=28, W=28, k=(3, 3), stride=(2, 2), padding=(1, 1)),
    dict(N=4, C_in=512, C_out=512, H=7, W=7, k=(5, 5), padding=(2, 2)),
    dict(N=2, C_in=32, C_out=64, H=112, W=112, k=(3, 3), padding=(1, 1), layout="channels_last"),
], ids=["64-128@56", "128-256@28s2", "512@7k5", "32-64@112cl"])
def test_realistic_sizes_on_gpu(shape, dtype):
    # accumulations over up to 512 channels x 25 taps: fp32 allows for TF32 like cuDNN
    check(Case(dtype=dtype, **shape), fused, "cuda")
