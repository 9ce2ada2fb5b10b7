"""examples/train.py: the fused path and the two-layer path follow the same loss curve, the BSConv-S regulariser
enters the loss, checkpoints resume to the same run, the CIFAR-10 reader takes the official format, and the
progress display works without tqdm. Tiny runs: a few steps of the smallest BSConv-U network on 8x8 digits."""
from __future__ import annotations

import importlib.util
import pathlib
import pickle
import sys

import numpy as np
import pytest
import torch
from torch import nn

from bsconv_fused import BSConvU
from bsconv_fused import reg_loss as model_reg_loss
from bsconv_fused.models import get_model

PATH = pathlib.Path(__file__).resolve().parents[1] / "examples" / "train.py"


@pytest.fixture(scope="module")
def ex():
    spec = importlib.util.spec_from_file_location("bsconv_train_example", PATH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


@pytest.fixture
def digits():
    pytest.importorskip("sklearn", reason="the digits data set comes with scikit-learn")


SMALL = "cifar_wrn16_1_bsconvu"  # the smallest zoo network with BSConvU layers (no BN inside: fused in training)


def _model(name: str, backend: str, classes: int = 10):
    torch.manual_seed(0)
    return get_model(name, classes, backend=backend)


def _tiny(backend: str) -> nn.Module:
    """Two BSConvU layers: the Triton interpreter costs about a second per layer and step on 2 cores."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.BatchNorm2d(3), BSConvU(3, 8, 3, padding=1, bias=False, backend=backend), nn.BatchNorm2d(8), nn.ReLU(),
        BSConvU(8, 16, 3, stride=2, padding=1, bias=True, backend=backend), nn.BatchNorm2d(16), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))


def test_fused_and_two_layer_paths_follow_the_same_loss_curve(ex, digits, triton_device):
    cfg = dict(epochs=1, batch_size=4, lr=0.05, limit_train=12, max_steps=3, progress=False, device=triton_device,
               amp=False)
    fused = _tiny("triton")
    seen = []
    for layer in (fused[1], fused[4]):
        layer.register_forward_hook(lambda m, i, o: seen.append(o.grad_fn.name() if o.grad_fn else None))
    got = ex.train(ex.Config(**cfg, backend="triton"), model=fused).losses
    want = ex.train(ex.Config(**cfg, backend="torch"), model=_tiny("torch").to(triton_device)).losses
    assert len(seen) == 6 and all("triton_forward" in s for s in seen)
    assert len(got) == len(want) == 3
    # fp32: the fused kernel sums in another order; the curves differed by ~1e-7 relative here, 1e-5 leaves room
    # for other summation orders while a wrong gradient moves the 2nd and 3rd losses by far more
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=0)


def test_bsconvs_regulariser_enters_the_loss(ex, digits):
    name = "cifar_wrn16_1_bsconvs_p1d4"
    cfg = dict(model=name, epochs=1, batch_size=8, limit_train=8, max_steps=1, progress=False, device="cpu",
               backend="torch")
    initial = _model(name, "torch")
    expected = model_reg_loss(initial, 1.0).item()
    assert expected > 0
    with_reg = ex.train(ex.Config(**cfg, reg_alpha=1.0), model=_model(name, "torch")).losses[0]
    without = ex.train(ex.Config(**cfg, reg_alpha=0.0), model=_model(name, "torch")).losses[0]
    assert with_reg - without == pytest.approx(expected, rel=1e-5)


def test_checkpoint_resume_continues_the_same_run(ex, digits, tmp_path):
    ckpt = str(tmp_path / "ckpt.pt")
    cfg = dict(model="tiny", batch_size=8, limit_train=16, limit_test=16, progress=False, device="cpu",
               backend="torch")
    full = ex.train(ex.Config(**cfg, epochs=2), model=_tiny("torch"))
    first = ex.train(ex.Config(**cfg, epochs=1, checkpoint=ckpt), model=_tiny("torch"))
    assert first.epochs_done == 1 and (tmp_path / "ckpt.pt").is_file()
    second = ex.train(ex.Config(**cfg, epochs=2, checkpoint=ckpt, resume=True), model=_tiny("torch"))
    assert second.epochs_done == 2
    assert first.losses + second.losses == pytest.approx(full.losses, rel=1e-6)
    a, b = full.model.state_dict(), second.model.state_dict()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-6, atol=1e-7)
    with pytest.raises(SystemExit, match="holds a"):
        ex.train(ex.Config(**{**cfg, "model": "other"}, epochs=2, checkpoint=ckpt, resume=True), model=_tiny("torch"))


def _write_cifar(folder: pathlib.Path, n: int) -> None:
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"labels": list(rng.integers(0, 10, n))}
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f)


def test_cifar10_from_its_python_batches(ex, tmp_path):
    _write_cifar(tmp_path / "cifar-10-batches-py", 4)
    train, test, classes = ex.load_cifar10(str(tmp_path))
    x, y = train.tensors
    assert classes == 10 and x.shape == (20, 3, 32, 32) and y.shape == (20,) and len(test) == 4
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    with open(tmp_path / "cifar-10-batches-py" / "data_batch_1", "rb") as f:
        raw = pickle.load(f, encoding="bytes")
    # row layout: 1024 red, then green, then blue values, each row-major 32x32
    torch.testing.assert_close(x[0, 1, 2, 3] * 255, torch.tensor(float(raw[b"data"][0, 1024 + 2 * 32 + 3])))
    aug = ex.augment_cifar(x[:4], torch.Generator().manual_seed(0))
    assert aug.shape == (4, 3, 32, 32)
    result = ex.train(ex.Config(model="tiny", data="cifar10", data_dir=str(tmp_path), epochs=1, batch_size=4,
                                limit_test=4, progress=False, device="cpu", backend="torch"), model=_tiny("torch"))
    assert result.epochs_done == 1 and len(result.accuracies) == 1
    assert len(result.losses) == 5 and np.isfinite(result.losses).all()
    with pytest.raises(SystemExit, match="no CIFAR-10 python batches"):
        ex.load_cifar10(str(tmp_path / "nowhere"))


def test_progress_with_and_without_tqdm(ex, monkeypatch, capsys):
    pytest.importorskip("tqdm")
    bar = ex.progress(3, "epoch 1/1", True)
    assert type(bar).__module__.startswith("tqdm")
    bar.close()
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)  # import fails as if tqdm were absent
    bar = ex.progress(3, "epoch 1/1", True)
    for _ in range(3):
        bar.set_postfix_str("loss 1.0")
        bar.update()
    assert "epoch 1/1 3/3 loss 1.0" in capsys.readouterr().out


def test_arguments(ex):
    cfg = ex.parse_args(["--model", SMALL, "--epochs", "2", "--no-amp", "--backend", "torch", "--no-progress"])
    assert (cfg.model, cfg.epochs, cfg.amp, cfg.backend, cfg.progress) == (SMALL, 2, False, "torch", False)
    with pytest.raises(SystemExit, match="needs a CUDA device"):
        ex.resolve(ex.Config(device="cpu", amp=True))
    with pytest.raises(SystemExit, match="--resume needs --checkpoint"):
        ex.resolve(ex.Config(device="cpu", resume=True))
    with pytest.raises(SystemExit, match="--batch-size"):
        ex.resolve(ex.Config(device="cpu", batch_size=0))
    with pytest.raises(SystemExit, match="--max-steps"):
        ex.resolve(ex.Config(device="cpu", max_steps=0))
    with pytest.raises(SystemExit, match="--data-dir"):
        ex.load_data(ex.Config(data="cifar10"))
