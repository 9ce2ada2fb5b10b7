#!/usr/bin/env python
"""Train a BSConv network of the model zoo with bsconv_fused's layers.

Runs anywhere: on the CPU with scikit-learn's bundled digits images (1797 grey 8x8 images of 10 classes, shipped
inside scikit-learn, no download), or on CIFAR-10 when its python batches are on disk (``--data cifar10
--data-dir DIR``, DIR holding ``cifar-10-batches-py`` or its files; nothing is downloaded). On a GPU it trains in
mixed precision (autocast; bf16 where supported, else fp16 with a gradient scaler). BSConv-S networks add their
orthonormality regulariser (``--reg-alpha``) to the loss. ``--checkpoint PATH`` saves after every epoch and
``--resume`` continues from it. A progress bar shows when tqdm is installed.

    python examples/train.py                                        # digits, CIFAR ResNet-20-BSConvU, CPU
    python examples/train.py --model cifar_wrn16_1_bsconvs_p1d4 --epochs 3 --checkpoint ckpt.pt
    python examples/train.py --checkpoint ckpt.pt --resume --epochs 6
    python examples/train.py --data cifar10 --data-dir ~/data --model cifar_resnet110_bsconvu --epochs 160
    python examples/train.py --backend torch                        # the two-layer path, for comparison

Needs scikit-learn for the digits data (``pip install scikit-learn``) and optionally tqdm.
"""
from __future__ import annotations

import argparse
import math
import os
import pickle
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import bsconv_fused
from bsconv_fused.backends import CHOICES as BACKENDS
from bsconv_fused.models import get_model


@dataclass
class Config:
    model: str = "cifar_resnet20_bsconvu"
    data: str = "digits"              # "digits" or "cifar10"
    data_dir: Optional[str] = None    # CIFAR-10: the folder of the python batches (or its parent)
    epochs: int = 10
    batch_size: int = 64
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    reg_alpha: float = 0.1            # weight of the BSConv-S regulariser (no effect on networks without one)
    backend: str = "auto"
    device: Optional[str] = None      # default: "cuda" when available, else "cpu"
    amp: Optional[bool] = None        # default: on for CUDA; mixed precision needs a GPU
    checkpoint: Optional[str] = None
    resume: bool = False
    seed: int = 0
    limit_train: Optional[int] = None  # use only the first N training images (smoke runs)
    limit_test: Optional[int] = None   # evaluate on the first N test images only
    max_steps: Optional[int] = None    # stop after N optimizer steps in this run
    progress: bool = True


@dataclass
class Result:
    model: nn.Module
    losses: List[float] = field(default_factory=list)      # training loss of every step of this run
    accuracies: List[float] = field(default_factory=list)  # test accuracy after every epoch of this run
    epochs_done: int = 0


# ------------------------------------------------------------------------------------------------------ data
def load_digits(seed: int, test_fraction: float = 0.2) -> Tuple[TensorDataset, TensorDataset, int]:
    """scikit-learn's bundled 8x8 digits as 3-channel images in [0, 1], split train/test with a fixed seed."""
    try:
        from sklearn.datasets import load_digits as sk_load_digits
    except ImportError:
        raise SystemExit("the digits data set comes with scikit-learn: pip install scikit-learn "
                         "(or train on CIFAR-10 with --data cifar10 --data-dir DIR)") from None
    digits = sk_load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).div_(16.0)[:, None].expand(-1, 3, -1, -1).contiguous()
    y = torch.tensor(digits.target, dtype=torch.long)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    n_test = int(len(y) * test_fraction)
    test, train = order[:n_test], order[n_test:]
    return TensorDataset(x[train], y[train]), TensorDataset(x[test], y[test]), 10


def _cifar_folder(root: str) -> str:
    for folder in (root, os.path.join(root, "cifar-10-batches-py")):
        if os.path.isfile(os.path.join(folder, "test_batch")):
            return folder
    raise SystemExit(f"--data-dir {root!r} holds no CIFAR-10 python batches (data_batch_1..5, test_batch, or a "
                     "cifar-10-batches-py folder with them); get them from https://www.cs.toronto.edu/~kriz/cifar.html")


def _read_batch(path: str) -> Tuple[torch.Tensor, torch.Tensor]:
    with open(path, "rb") as f:
        batch = pickle.load(f, encoding="bytes")
    data = torch.as_tensor(batch[b"data"]).reshape(-1, 3, 32, 32)
    return data.float().div_(255.0), torch.as_tensor(batch[b"labels"], dtype=torch.long)


def load_cifar10(root: str) -> Tuple[TensorDataset, TensorDataset, int]:
    """CIFAR-10 from its python batches on disk (the official format: pickled dicts of uint8 rows and labels)."""
    folder = _cifar_folder(os.path.expanduser(root))
    parts = [_read_batch(os.path.join(folder, f"data_batch_{i}")) for i in range(1, 6)
             if os.path.isfile(os.path.join(folder, f"data_batch_{i}"))]
    if not parts:
        raise SystemExit(f"{folder!r} has test_batch but no data_batch_1..5")
    x, y = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
    return TensorDataset(x, y), TensorDataset(*_read_batch(os.path.join(folder, "test_batch"))), 10


def augment_cifar(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """The standard CIFAR augmentation per image: random crop from a 4-pixel zero padding, random horizontal flip."""
    n, _, h, w = x.shape
    padded = F.pad(x, (4, 4, 4, 4))
    dy, dx = torch.randint(0, 9, (2, n), generator=generator).tolist()
    out = torch.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(n)])
    flip = torch.rand(n, generator=generator) < 0.5
    out[flip] = out[flip].flip(-1)
    return out


def load_data(cfg: Config) -> Tuple[TensorDataset, TensorDataset, int]:
    if cfg.data == "digits":
        train, test, classes = load_digits(cfg.seed)
    elif cfg.data == "cifar10":
        if cfg.data_dir is None:
            raise SystemExit("--data cifar10 needs --data-dir (the folder of the CIFAR-10 python batches)")
        train, test, classes = load_cifar10(cfg.data_dir)
    else:
        raise SystemExit(f"--data must be digits or cifar10, got {cfg.data!r}")
    if cfg.limit_train is not None:
        train = TensorDataset(*(t[:cfg.limit_train] for t in train.tensors))
    if cfg.limit_test is not None:
        test = TensorDataset(*(t[:cfg.limit_test] for t in test.tensors))
    return train, test, classes


# ----------------------------------------------------------------------------------------------- progress
class _PlainProgress:
    """What shows without tqdm: one line per tenth of the epoch."""

    def __init__(self, total: int, desc: str):
        self.total, self.desc, self.n, self.postfix = total, desc, 0, ""
        self.every = max(1, total // 10)

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.n % self.every == 0 or self.n == self.total:
            print(f"{self.desc} {self.n}/{self.total} {self.postfix}", flush=True)

    def set_postfix_str(self, s: str) -> None:
        self.postfix = s

    def close(self) -> None:
        pass


class _Silent(_PlainProgress):
    def __init__(self):
        super().__init__(1, "")

    def update(self, n: int = 1) -> None:
        pass


def progress(total: int, desc: str, enabled: bool):
    """A tqdm bar when tqdm is installed, else plain progress lines; nothing when not ``enabled``."""
    if not enabled:
        return _Silent()
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return _PlainProgress(total, desc)
    return tqdm(total=total, desc=desc, leave=False)


# ------------------------------------------------------------------------------------------------ training
def resolve(cfg: Config) -> Config:
    """Fill the defaults that depend on the machine and check the arguments."""
    if cfg.backend not in BACKENDS:
        raise SystemExit(f"--backend must be one of {BACKENDS}, got {cfg.backend!r}")
    device = cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")
    amp = (torch.device(device).type == "cuda") if cfg.amp is None else cfg.amp
    if amp and torch.device(device).type != "cuda":
        raise SystemExit("--amp (mixed precision) needs a CUDA device")
    for name in ("epochs", "batch_size", "limit_train", "limit_test", "max_steps"):
        value = getattr(cfg, name)
        if value is not None and value < 1:
            raise SystemExit(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if cfg.resume and not cfg.checkpoint:
        raise SystemExit("--resume needs --checkpoint PATH")
    return Config(**{**asdict(cfg), "device": device, "amp": amp})


def amp_dtype(device: torch.device) -> torch.dtype:
    return torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else torch.float16


def evaluate(model: nn.Module, data: TensorDataset, device: torch.device, batch_size: int, amp: bool) -> float:
    model.eval()
    correct = 0
    with torch.no_grad(), torch.autocast(device.type, dtype=amp_dtype(device), enabled=amp):
        for x, y in DataLoader(data, batch_size=batch_size):
            correct += int((model(x.to(device)).argmax(1) == y.to(device)).sum())
    return correct / len(data)


def _save(path: str, state: dict) -> None:
    tmp = path + ".tmp"
    torch.save(state, tmp)
    os.replace(tmp, path)  # a crash while saving leaves the previous checkpoint intact


def train(cfg: Config, model: Optional[nn.Module] = None) -> Result:
    """Train ``model`` (default: ``get_model(cfg.model)``) as configured; return the losses and accuracies."""
    cfg = resolve(cfg)
    device = torch.device(cfg.device)
    torch.manual_seed(cfg.seed)
    train_set, test_set, classes = load_data(cfg)
    if model is None:
        model = get_model(cfg.model, classes, backend=cfg.backend)
    model = model.to(device)
    steps_per_epoch = math.ceil(len(train_set) / cfg.batch_size)
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, nesterov=True,
                                weight_decay=cfg.weight_decay)
    dtype = amp_dtype(device)
    # fp16 gradients can underflow: scale the loss; bf16 has fp32's range and needs no scaler
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.amp and dtype == torch.float16)
    start = 0
    if cfg.resume and os.path.isfile(cfg.checkpoint):
        state = torch.load(cfg.checkpoint, map_location=device, weights_only=True)
        if state["model_name"] != cfg.model:
            raise SystemExit(f"--checkpoint holds a {state['model_name']!r}, not a {cfg.model!r}")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        start = state["epoch"]
        print(f"resumed from {cfg.checkpoint} after epoch {start}")
    elif cfg.resume:
        print(f"no checkpoint at {cfg.checkpoint} yet: starting from scratch")
    result = Result(model, epochs_done=start)
    steps = 0
    for epoch in range(start, cfg.epochs):
        model.train()
        # cosine decay per epoch, computed from the epoch alone: a resumed run (even with more epochs) needs no state
        for group in optimizer.param_groups:
            group["lr"] = cfg.lr * 0.5 * (1.0 + math.cos(math.pi * epoch / cfg.epochs))
        # the shuffle (and augmentation) depend on (seed, epoch) only, so a resumed run sees the same batches
        gen = torch.Generator().manual_seed(cfg.seed * 1000 + epoch)
        loader = DataLoader(train_set, batch_size=cfg.batch_size, shuffle=True, generator=gen)
        bar = progress(steps_per_epoch, f"epoch {epoch + 1}/{cfg.epochs}", cfg.progress)
        t0 = time.perf_counter()
        for x, y in loader:
            if cfg.data == "cifar10":
                x = augment_cifar(x, gen)
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=dtype, enabled=cfg.amp):
                loss = F.cross_entropy(model(x), y)
            # the regulariser in fp32, outside autocast: it measures how far pw1's rows are from orthonormal
            loss = loss.float() + bsconv_fused.reg_loss(model, cfg.reg_alpha)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            result.losses.append(loss.item())
            bar.set_postfix_str(f"loss {result.losses[-1]:.4f}")
            bar.update()
            steps += 1
            if cfg.max_steps is not None and steps >= cfg.max_steps:
                break
        bar.close()
        if cfg.max_steps is not None and steps >= cfg.max_steps:
            print(f"stopped after {steps} step{'' if steps == 1 else 's'} (--max-steps) in epoch {epoch + 1}; "
                  "no checkpoint of a partial epoch")
            break
        acc = evaluate(model, test_set, device, cfg.batch_size, cfg.amp)
        result.accuracies.append(acc)
        result.epochs_done = epoch + 1
        print(f"epoch {epoch + 1}/{cfg.epochs}: loss {result.losses[-1]:.4f}, test accuracy {100 * acc:.2f}% "
              f"({time.perf_counter() - t0:.1f} s)", flush=True)
        if cfg.checkpoint:
            _save(cfg.checkpoint, dict(model_name=cfg.model, epoch=epoch + 1, model=model.state_dict(),
                                       optimizer=optimizer.state_dict(),
                                       scaler=scaler.state_dict()))
    return result


def parse_args(argv=None) -> Config:
    d = Config()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default=d.model, help="a bsconv_fused.models.get_model name")
    p.add_argument("--data", default=d.data, choices=("digits", "cifar10"))
    p.add_argument("--data-dir", default=d.data_dir, help="CIFAR-10: the folder of its python batches")
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.lr, help="initial learning rate (cosine decay per epoch)")
    p.add_argument("--momentum", type=float, default=d.momentum)
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    p.add_argument("--reg-alpha", type=float, default=d.reg_alpha, help="weight of the BSConv-S regulariser")
    p.add_argument("--backend", default=d.backend, choices=BACKENDS,
                   help="BSConv backend; 'torch' runs the two-layer path")
    p.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                   help="mixed precision (default: on with CUDA)")
    p.add_argument("--checkpoint", default=None, help="save here after every epoch")
    p.add_argument("--resume", action="store_true", help="continue from --checkpoint")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--limit-train", type=int, default=None, help="use only the first N training images")
    p.add_argument("--limit-test", type=int, default=None, help="evaluate on the first N test images only")
    p.add_argument("--max-steps", type=int, default=None, help="stop after N steps")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    return Config(**vars(p.parse_args(argv)))


def main(argv=None) -> int:
    cfg = parse_args(argv)
    result = train(cfg)
    if result.accuracies:
        print(f"final test accuracy {100 * result.accuracies[-1]:.2f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
