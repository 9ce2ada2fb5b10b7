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


def _copy_checkout(tmp_path) -> Path:
    src = tmp_path / "src"
    src.mkdir()
    for name in ("setup.py", "pyproject.toml", "README.md", "LICENSE"):
        if (ROOT / name).exists():
            shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "bsconv_fused", src / "bsconv_fused",
                    ignore=shutil.ignore_patterns("*.so", "*.pyd", "__pycache__", "_build_failed.txt"))
    shutil.copytree(ROOT / "csrc", src / "csrc")
    return src


def _wheel(tmp_path, **env):
    """Build a wheel of a copy of the checkout (no .so, no caches) with ``env``; returns (process, wheels)."""
    src = _copy_checkout(tmp_path)
    full_env = dict(os.environ, **env)
    for flag in ("BSCONV_FUSED_FORCE_BUILD", "BSCONV_FUSED_FORCE_CUDA"):  # CI sets them; these builds must not fail
        full_env.pop(flag, None)
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "-v", "--no-build-isolation", "--no-deps",
                           "--no-index", "-w", str(tmp_path / "dist"), str(src)], capture_output=True, text=True,
                          env=full_env, timeout=600)
    return proc, list((tmp_path / "dist").glob("*.whl"))


def _import_from_wheel(tmp_path, wheel) -> subprocess.CompletedProcess:
    with zipfile.ZipFile(wheel) as zf:
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
    assert str(tmp_path / "site") in proc.stdout
    return proc


def test_pure_python_wheel(tmp_path):
    """BSCONV_FUSED_SKIP_BUILD=1 builds a py3-none-any wheel without compiling anything, and it imports."""
    proc, wheels = _wheel(tmp_path, BSCONV_FUSED_SKIP_BUILD="1")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert len(wheels) == 1 and wheels[0].name.endswith("py3-none-any.whl"), wheels
    assert "is not built" in _import_from_wheel(tmp_path, wheels[0]).stdout


def test_no_compiler_installs_pure_python_with_one_message(tmp_path):
    """No C++ compiler: the install completes as the pure-Python package and says what is missing, at install
    time and when the backends are listed (no ninja traceback)."""
    proc, wheels = _wheel(tmp_path, CXX=str(tmp_path / "no-such-c++"), BSCONV_FUSED_CPU_ONLY="1")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "no C++ compiler found" in out and "Traceback" not in out, out[-3000:]
    assert len(wheels) == 1 and wheels[0].name.endswith("py3-none-any.whl"), wheels


def test_failing_compile_installs_pure_python_with_one_message(tmp_path):
    """A compiler that fails (here one that always exits 1): pure-Python install, and the reason travels with the
    package so available_backends() reports it instead of 'not built'."""
    fake = tmp_path / "failing-c++"
    fake.write_text("#!/bin/sh\necho 'failing-c++: simulated compiler failure' >&2\nexit 1\n")
    fake.chmod(0o755)
    proc, wheels = _wheel(tmp_path, CXX=str(fake), BSCONV_FUSED_CPU_ONLY="1", MAX_JOBS="1")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "was not built: the build failed" in out, out[-3000:]
    assert len(wheels) == 1, wheels
    reason = _import_from_wheel(tmp_path, wheels[0]).stdout
    assert "was not built: the build failed" in reason and "pip install --no-build-isolation" in reason


def test_failing_compile_is_an_error_when_forced(tmp_path):
    fake = tmp_path / "failing-c++"
    fake.write_text("#!/bin/sh\nexit 1\n")
    fake.chmod(0o755)
    src = _copy_checkout(tmp_path)
    forced = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-build-isolation", "--no-deps", "--no-index",
                             "-w", str(tmp_path / "dist"), str(src)], capture_output=True, text=True, timeout=600,
                            env=dict(os.environ, BSCONV_FUSED_FORCE_BUILD="1", CXX=str(fake),
                                     BSCONV_FUSED_CPU_ONLY="1", MAX_JOBS="1"))
    assert forced.returncode != 0 and not list((tmp_path / "dist").glob("*.whl"))


def test_setup_scripts_parse_and_reject_a_bad_torch_flavour(tmp_path):
    """The shell scripts are valid bash, and a wrong BSCONV_TORCH fails at once with the rule, before any venv or
    download (the install itself is exercised by scripts/test.sh in CI)."""
    for script in ("setup_env.sh", "test.sh", "main.sh"):
        proc = subprocess.run(["bash", "-n", str(ROOT / "scripts" / script)], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
    venv = tmp_path / "venv"
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "setup_env.sh")], capture_output=True, text=True,
                          env=dict(os.environ, BSCONV_TORCH="gpu", BSCONV_VENV=str(venv)), timeout=60)
    assert proc.returncode == 2 and "BSCONV_TORCH must be cpu, cuda or auto, got 'gpu'" in proc.stderr
    assert not venv.exists()
