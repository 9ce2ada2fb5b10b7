"""One rank of tests/test_distributed.py: trains the shared small network under DDP or FSDP with gloo on the CPU.

Run as ``python tests/distributed_worker.py RANK WORLD PORT MODE OUT`` (MODE: ddp or fsdp); writes the final
parameters and buffers to OUT. The network and data come from make_net / make_batches, which the test's
single-process run uses too.
"""
from __future__ import annotations

import os
import sys

import torch
from torch import nn

import bsconv_fused  # noqa: F401
from bsconv_fused import backends
from bsconv_fused.modules import BSConvS, BSConvU

EXT = "cpu" if "cpu" in backends.BACKENDS else "cuda"
STEPS = 3
GLOBAL_BATCH = 8
CLASSES = 4


def make_net(backend: str = EXT) -> nn.Module:
    """BSConvU and BSConvS with BN inside (training mode), no other BN (native SyncBatchNorm runs on GPUs only)."""
    torch.manual_seed(0)
    net = nn.Sequential(
        BSConvU(3, 8, 3, padding=1, with_bn=True, backend=backend), nn.ReLU(),
        BSConvS(8, 12, 3, stride=2, padding=1, with_bn=True, p=0.5, backend=backend), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(12, CLASSES))
    with torch.no_grad():  # non-trivial BN affine, so wrong statistics gradients would show
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    return net.double()


def make_batches():
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(GLOBAL_BATCH, 3, 6, 6, generator=g, dtype=torch.float64) * 2 + 1,
             torch.randint(0, CLASSES, (GLOBAL_BATCH,), generator=g)) for _ in range(STEPS)]


def train(model: nn.Module, batches, rank: int = 0, world: int = 1) -> None:
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    per_rank = GLOBAL_BATCH // world
    for x, y in batches:
        xs, ys = x[rank * per_rank:(rank + 1) * per_rank], y[rank * per_rank:(rank + 1) * per_rank]
        opt.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(xs), ys).backward()
        opt.step()


def main(rank: int, world: int, port: int, mode: str, out: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        net = make_net()
        if mode == "ddp":
            # DDP refuses SyncBatchNorm in CPU modules at construction, because the native SyncBatchNorm kernel is
            # GPU-only; the fused path all-reduces with any backend, so convert after wrapping (on GPUs the usual
            # order works). convert_sync_batchnorm keeps the same Parameter and buffer objects, which DDP holds.
            model = nn.parallel.DistributedDataParallel(net)
            nn.SyncBatchNorm.convert_sync_batchnorm(net)
        elif mode == "fsdp":
            net = nn.SyncBatchNorm.convert_sync_batchnorm(net)
            from torch.distributed.fsdp import fully_shard

            for layer in (net[0], net[2]):
                fully_shard(layer)
            model = fully_shard(net)
        else:
            raise ValueError(f"MODE must be ddp or fsdp, got {mode!r}")
        assert sum(isinstance(m, nn.SyncBatchNorm) for m in net.modules()) == 3
        train(model, make_batches(), rank, world)
        state = {}
        for name, t in net.state_dict().items():
            full = t.full_tensor() if hasattr(t, "full_tensor") else t  # FSDP2 shards parameters as DTensors
            state[name] = full.detach().clone()
        torch.save(state, out)
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5])
