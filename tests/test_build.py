"""Packaging and build of the compiled extension: what setup.py builds, and how the package behaves without it.

- When CI builds the full CUDA extension it sets BSCONV_FUSED_EXPECT_CUDA_BUILD=1 (and BSCONV_FUSED_EXPECT_EXTENSION=1
  for a CPU-only build): the extension must then be importable with the kernels it was asked for, so a build that
  silently fell back (pure Python, or CPU-only) fails here instead of skipping every extension test.
- `import bsconv_fused` must work and report the reason and the rebuild command when _C cannot be imported.
- BSCONV_FUSED_SKIP_BUILD=1 gives a pure-Python wheel (no compiler, no torch headers needed).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from bsconv_fused import _ext

ROOT = Path(__file__).resolve().parents[1]


def _flag(name: str) -> bool:
    return os.environ.get(name, "") == "1"


@pytest.mark.skipif(not (_flag("BSCONV_FUSED_EXPECT_EXTENSION") or _flag("BSCONV_FUSED_EXPECT_CUDA_BUILD")),
                    reason="set BSCONV_FUSED_EXPECT_EXTENSION=1 where the extension was built")
def test_extension_was_built():
    assert _ext.load() is not None, _ext.reason()
    assert torch.ops.bsconv_fused.cpp_forward.default is not None


@pytest.mark.skipif(not _flag("BSCONV_FUSED_EXPECT_CUDA_BUILD"),
                    reason="set BSCONV_FUSED_EXPECT_CUDA_BUILD=1 where the CUDA extension was built")
def test_cuda_extension_was_built():
    assert _ext.has_cuda_kernels(), _ext.cuda_reason()
    assert torch._C._dispatch_has_kernel_for_dispatch_key("bsconv_fused::cpp_backward", "CUDA")
    assert torch._C._dispatch_has_kernel_for_dispatch_key("bsconv_fused::cpp_forward", "CPU")


def _run(code: str, **env) -> subprocess.CompletedProcess:
    full_env = dict(os.environ, PYTHONPATH=str(ROOT), **env)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=full_env, cwd=str(ROOT),
                          timeout=300)


# Makes `import bsconv_fused._C` fail the way a given broken install would, before bsconv_fused is imported.
_BLOCK = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "bsconv_fused._C":
            {action}
        return None
sys.meta_path.insert(0, Block())
"""


@pytest.mark.parametrize("action,expected", [
    ("raise ModuleNotFoundError(f'No module named {name!r}', name=name)", "is not built"),
    ("raise ImportError('/x/_C.so: undefined symbol: _ZN3c104impl3fooEv')", "built for another torch"),
    ("raise OSError('libcudart.so.13: cannot open shared object file')", "needs CUDA libraries"),
], ids=["missing", "other_torch", "no_cuda_runtime"])
def test_import_without_extension(action, expected):
    code = _BLOCK.format(action=action) + """
import bsconv_fused
from bsconv_fused import _ext
status = bsconv_fused.available_backends()["cpu"]
assert not status.available and not bsconv_fused.available_backends()["cuda"].available
assert _ext.load() is None and not _ext.has_cuda_kernels() and not _ext.available()
print(status.reason)
"""
    proc = _run(code)
    assert proc.returncode == 0, proc.stderr
    assert expected in proc.stdout
    assert "pip install --no-build-isolation" in proc.stdout  # the command that fixes it


def test_import_order_with_triton_ops():
    # The Python-defined ops (a FRAGMENT of the namespace) and TORCH_LIBRARY in _C coexist in either order.
    if _ext.load() is None:
        pytest.skip(f"extension unavailable: {_ext.reason()}")
    for first, second in (("bsconv_fused._C", "bsconv_fused.ops"), ("bsconv_fused.ops", "bsconv_fused._C")):
        code = f"""
import importlib, torch
importlib.import_module("{first}"); importlib.import_module("{second}")
from bsconv_fused import _ext
assert _ext.available(), _ext.reason()
print(torch.ops.bsconv_fused.triton_forward.default, torch.ops.bsconv_fused.cpp_forward.default)
"""
        proc = _run(code)
        assert proc.returncode == 0, proc.stderr


def test_pure_python_wheel(tmp_path):
    """BSCONV_FUSED_SKIP_BUILD=1 builds a py3-none-any wheel without compiling anything, and it imports."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("setup.py", "pyproject.toml"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "bsconv_fused", src / "bsconv_fused",
                    ignore=shutil.ignore_patterns("*.so", "*.pyd", "__pycache__"))
    shutil.copytree(ROOT / "csrc", src / "csrc")
    env = dict(os.environ, BSCONV_FUSED_SKIP_BUILD="1")
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-build-isolation", "--no-deps", "--no-index",
                           "-w", str(tmp_path / "dist"), str(src)], capture_output=True, text=True, env=env,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    wheels = list((tmp_path / "dist").glob("*.whl"))
    assert len(wheels) == 1 and wheels[0].name.endswith("py3-none-any.whl"), wheels
    with zipfile.ZipFile(wheels[0]) as zf:
        names = zf.namelist()
        assert not [n for n in names if n.endswith((".so", ".pyd"))], names
        zf.extractall(tmp_path / "site")
    # An editable install of the checkout (what scripts/setup_env.sh makes) puts a finder on sys.meta_path that
    # would still resolve bsconv_fused._C to the checkout's build: drop it so only the wheel's files are seen.
    code = """
import sys
sys.meta_path = [f for f in sys.meta_path if "__editable__" not in (getattr(f, "__module__", "") or "")
                 and "__editable__" not in type(f).__module__]
import bsconv_fused
print(bsconv_fused.__file__)
print(bsconv_fused.available_backends()["cpu"].reason)
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, PYTHONPATH=str(tmp_path / "site")), cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert str(tmp_path / "site") in proc.stdout and "is not built" in proc.stdout
