"""Benchmarks of the BatchNorm fusions (issue 10 items 1 and 4), on the GPU when present, else on the CPU.

1. Training step (forward, cross-entropy, backward, SGD) of a BSConv-S network with BN inside every layer
   (MobileNetV1 layout at CIFAR size, BSConvS(p=0.25, with_bn=True) + BN + ReLU per unit): the fused path
   (BN folded with batch statistics, bsconv_fused.bn_stats) against the two-layer path (each layer's submodules run
   one after the other, BatchNorm2d on the stored intermediate). Memory: bytes of the tensors saved for backward
   (measured with saved_tensors_hooks, unique storages; any device) and, on CUDA, the allocator's peak.
2. Inference latency of MobileNetV1-BSConvU (224x224, N=1): the plain model on the two-layer path, the plain model
   on the fused op (BN after each layer and ReLU separate), and fuse_for_inference(model) (BN folded into the
   depthwise weights, ReLU recorded on the layer).

Each contender is first checked against the float64 two-layer model (losses and gradients / logits).

    python benchmarks/bench_bn_train.py [--quick] [--json OUT]

CPU numbers from a shared machine are indicative only (other processes compete for the cores).
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import types
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bsconv_fused import backends  # noqa: E402
from bsconv_fused.bench.machine import machine_info  # noqa: E402
from bsconv_fused.bench.timing import peak_memory, time_fn  # noqa: E402
from bsconv_fused.inference import FusedBSConv, fuse_for_inference  # noqa: E402
from bsconv_fused.models import get_model, set_backend  # noqa: E402
from bsconv_fused.modules import BSConvS, _BSConvBase  # noqa: E402

STAGES = ((64,), (128, 128), (256, 256), (512,) * 6, (1024, 1024))


def bsconvs_net(width: float = 0.5, num_classes: int = 100, backend: str = "auto") -> nn.Module:
    """MobileNetV1 at CIFAR size with BSConvS(p=0.25, with_bn=True) + BN + ReLU units."""
    layers = [nn.Conv2d(3, int(32 * width), 3, padding=1, bias=False), nn.BatchNorm2d(int(32 * width)), nn.ReLU()]
    c = int(32 * width)
    for i, stage in enumerate(STAGES):
        for j, out in enumerate(stage):
            out = int(out * width)
            stride = (1, 1, 2, 2, 2)[i] if j == 0 else 1
            layers += [BSConvS(c, out, 3, stride=stride, padding=1, bias=False, p=0.25, with_bn=True,
                               backend=backend), nn.BatchNorm2d(out), nn.ReLU()]
            c = out
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, num_classes)]
    return nn.Sequential(*layers)


def two_layer(model: nn.Module) -> nn.Module:
    """The same model with every BSConv layer running its submodules one after the other (the reference path)."""
    model = copy.deepcopy(model)
    for m in model.modules():
        if isinstance(m, _BSConvBase):
            m.forward = types.MethodType(nn.Sequential.forward, m)
    return model


def saved_bytes(fn) -> int:
    """Bytes of the distinct storages autograd saves for backward during ``fn()`` (the activation memory)."""
    seen = {}

    def pack(t):
        if t.device.type != "meta":
            st = t.untyped_storage()
            seen[st.data_ptr()] = st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(seen.values())


def fused_backend(device: torch.device) -> str:
    return "auto" if device.type == "cuda" else ("cpu" if "cpu" in backends.BACKENDS else "cuda")


def bench_train(device, quick: bool, log) -> list:
    torch.manual_seed(0)
    N, size = (4, 32) if quick else (16, 32)
    base = bsconvs_net(0.25 if quick else 0.5, backend=fused_backend(device))
    x = torch.randn(N, 3, size, size, device=device)
    target = torch.randint(0, 100, (N,), device=device)
    ref = two_layer(base).double().to(device)
    ref.train()
    ref_loss = F.cross_entropy(ref(x.double()), target)
    ref_grads = torch.autograd.grad(ref_loss, list(ref.parameters()))
    flat_ref = torch.cat([r.flatten() for r in ref_grads])
    # yardstick for the errors below: how far the float64 gradients move when x moves by 1e-6 relative (BN networks
    # at small batch are ill-conditioned; an fp32 path cannot be expected to land closer than this)
    x_moved = x.double() * (1 + 1e-6 * torch.randn_like(x, dtype=torch.float64))
    moved = torch.autograd.grad(F.cross_entropy(ref(x_moved), target), list(ref.parameters()))
    sensitivity = ((torch.cat([m.flatten() for m in moved]) - flat_ref).norm() / flat_ref.norm()).item()
    rows = []
    for name, model in (("fused", copy.deepcopy(base)), ("two-layer", two_layer(base))):
        model = model.to(device).train()
        opt = torch.optim.SGD(model.parameters(), lr=1e-3)
        loss = F.cross_entropy(model(x), target)
        grads = torch.autograd.grad(loss, list(model.parameters()))
        # relative error of all gradients together: per tensor it would blow up on bn1.bias, whose true gradient is
        # zero (bn2 in training mode removes any per-channel constant), so both paths return rounding noise there
        diff = torch.cat([(g.double() - r).flatten() for g, r in zip(grads, ref_grads)])
        err = (diff.norm() / flat_ref.norm()).item()

        def step():
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), target).backward()
            opt.step()

        saved = saved_bytes(lambda: F.cross_entropy(model(x), target))
        peak = peak_memory(step, device)
        t = time_fn(step, device, quick=quick, long=True)
        row = dict(bench="train-step", model=f"bsconvs-mobilenetv1 N{N} {size}x{size} fp32", contender=name,
                   median_ms=t.median * 1e3, p20_ms=t.p20 * 1e3, p80_ms=t.p80 * 1e3, reps=t.reps,
                   saved_for_backward_MiB=saved / 2 ** 20, peak_MiB=None if peak is None else peak / 2 ** 20,
                   rel_grad_error_vs_fp64=err, fp64_grad_change_for_input_change_1e_6=sensitivity)
        log(row)
        rows.append(row)
    return rows


def bench_inference(device, quick: bool, log) -> list:
    torch.manual_seed(0)
    name = "cifar_mobilenetv1_w1d4_bsconvu" if quick else "mobilenetv1_w1_bsconvu"
    size = 32 if quick else 224
    plain = get_model(name, 1000, backend=fused_backend(device)).eval()
    with torch.no_grad():  # non-trivial BN statistics, so the folds are exercised
        for m in plain.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    x = torch.randn(1, 3, size, size, device=device)
    ref = copy.deepcopy(plain).double().to(device)
    set_backend(ref, "torch")
    with torch.no_grad():
        ref_out = ref(x.double())
    torch_plain = copy.deepcopy(plain)
    set_backend(torch_plain, "torch")
    fused = fuse_for_inference(plain)
    fused_torch = copy.deepcopy(fused)
    for m in fused_torch.modules():
        if isinstance(m, FusedBSConv):
            m.backend = "torch"
    rows = []
    for cname, model in (("plain two-layer", torch_plain), ("plain fused op", plain),
                         ("fuse_for_inference, torch ops", fused_torch), ("fuse_for_inference", fused)):
        model = model.to(device)
        with torch.no_grad():
            err = ((model(x).double() - ref_out).abs().max() / ref_out.abs().max()).item()
            t = time_fn(lambda: model(x), device, quick=quick, long=True)
        row = dict(bench="inference", model=f"{name} N1 {size}x{size} fp32", contender=cname,
                   median_ms=t.median * 1e3, p20_ms=t.p20 * 1e3, p80_ms=t.p80 * 1e3, reps=t.reps,
                   max_rel_error_vs_fp64=err)
        log(row)
        rows.append(row)
    return rows


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes (smoke test)")
    ap.add_argument("--json", type=Path, help="write machine info and rows here")
    ap.add_argument("--only", choices=("train", "inference"))
    args = ap.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")

    def log(row):
        print(json.dumps(row), flush=True)

    rows = []
    if args.only in (None, "train"):
        rows += bench_train(device, args.quick, log)
    if args.only in (None, "inference"):
        rows += bench_inference(device, args.quick, log)
    if args.json:
        args.json.write_text(json.dumps(dict(machine=machine_info(device), rows=rows), indent=1, default=str))


if __name__ == "__main__":
    main()
