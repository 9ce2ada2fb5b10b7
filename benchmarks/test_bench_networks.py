"""pytest-benchmark regression tracking of whole networks: inference and one training step per backend.

On a GPU: BSConv-U MobileNetV1 at 224x224 (N=64) and CIFAR ResNet-110-BSConvU (N=128), fp16. On the CPU (CI smoke
runs): CIFAR ResNet-20-BSConvU at N=2, fp32. The outputs of each backend are checked against the two-layer path
before timing.
"""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from bsconv_fused.backends import TABLE, available_backends
from bsconv_fused.models import get_model, set_backend
from bsconv_fused.testing import OpRecorder

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
if DEVICE.type == "cuda":
    NETS = [("mobilenetv1_w1_bsconvu", 1000, 64, 224, torch.float16), ("cifar_resnet110_bsconvu", 100, 128, 32,
                                                                       torch.float16)]
else:
    NETS = [("cifar_resnet20_bsconvu", 100, 2, 32, torch.float32)]
BACKENDS = ["torch"] + [b for b in ("triton", "cuda", "cpu") if available_backends()[b].available
                        and TABLE[b].device == DEVICE.type]


def _sync():
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def _check_backend_ran(model, x, backend):
    """The network's BSConv layers really run ``backend``'s ops (a fallback would benchmark the two-layer path)."""
    if backend == "torch":
        return
    with torch.no_grad(), OpRecorder() as rec:
        model(x)
    rec.assert_ran(backend, backward=False)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("net", NETS, ids=[f"{n[0]}-N{n[2]}" for n in NETS])
@pytest.mark.parametrize("mode", ["inference", "train-step"])
def test_network(benchmark, net, backend, mode):
    name, classes, n, size, dtype = net
    benchmark.group = f"{name} N{n} {mode}"
    torch.manual_seed(0)
    ref = get_model(name, classes, backend="torch").to(DEVICE, dtype).train(mode == "train-step")
    model = set_backend(copy.deepcopy(ref), backend)
    x = torch.randn(n, 3, size, size, device=DEVICE, dtype=dtype)
    target = torch.randint(0, classes, (n,), device=DEVICE)
    _check_backend_ran(model, x, backend)
    tol = 1e-3 if dtype == torch.float32 else 5e-2
    if mode == "inference":
        with torch.no_grad():
            got, want = model(x), ref(x)
        assert (got - want).abs().max().item() <= tol * max(1.0, want.abs().max().item())

        def run():
            with torch.no_grad():
                model(x)
            _sync()
    else:
        # one step's loss and every parameter gradient agree with the two-layer network before anything is timed
        losses = []
        for m in (model, ref):
            loss = F.cross_entropy(m(x).float(), target)
            loss.backward()
            losses.append(loss.item())
        assert abs(losses[0] - losses[1]) <= tol * max(1.0, abs(losses[1])), losses
        # one error over all gradients together (as the network benchmark does): per-tensor errors of tiny gradients
        # deep in a network differ even between two plain PyTorch paths
        diffs = [(p.grad.double() - q.grad.double()).abs().max().item()
                 for p, q in zip(model.parameters(), ref.parameters())]
        scale = max(1.0, max(q.grad.double().abs().max().item() for q in ref.parameters()))
        assert max(diffs) <= tol * scale, f"gradients differ from the two-layer network by {max(diffs):.2e}"
        opt = torch.optim.SGD(model.parameters(), lr=1e-6)
        opt.zero_grad(set_to_none=True)

        def run():
            F.cross_entropy(model(x).float(), target).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            _sync()
    benchmark.extra_info.update(device=str(DEVICE), backend=backend)
    benchmark(run)
