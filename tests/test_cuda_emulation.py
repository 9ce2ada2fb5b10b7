"""The CUDA kernels of csrc/cuda, run on the CPU through the host emulation in csrc/cuda/emulation.

No GPU is needed: translate.py turns the kernel launches into host calls, each block runs as host threads with
barriers, and a host stand-in follows the documented WMMA fragment layouts. emu_test compares y, dx, d_pw, d_dw,
d_bias and d_mid with a float64 reference over its case list (channel counts, kernel sizes, stride, padding,
dilation, biases, NCHW / channels_last / strided views, fp32 / TF32 / fp16 / bf16, deterministic and atomic
reductions, and 64-bit offsets: N=3 images 2^30+64 elements apart in lazily committed memory), and the refusal rule of the host entry points. It cannot see real warp-level races, real fragment
behaviour or timing: the GPU tests do that.
"""
import os
import shutil
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EMU = os.path.join(ROOT, "csrc", "cuda", "emulation")

pytestmark = pytest.mark.skipif(shutil.which("g++") is None or not os.path.exists("/usr/local/cuda/include/cuda_fp16.h")
                                and not os.environ.get("CUDA_HOME"),
                                reason="needs g++ and the CUDA headers (cuda_fp16.h, cuda_bf16.h)")


@pytest.fixture(scope="module")
def emu_binary(tmp_path_factory):
    out = tmp_path_factory.mktemp("bsconv_emu")
    r = subprocess.run(["sh", os.path.join(EMU, "build.sh")], env=dict(os.environ, OUT=str(out)),
                       capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return os.path.join(str(out), "emu_test")


def test_cuda_kernels_match_float64_under_emulation(emu_binary):
    # one emulated SM keeps the thread count (and the run time on a 2-core machine) down
    r = subprocess.run([emu_binary], env=dict(os.environ, BSCONV_EMU_SMS="1"), capture_output=True, text=True,
                       timeout=1800)
    tail = (r.stdout + r.stderr)[-4000:]
    assert r.returncode == 0, tail
    assert "0 failures" in tail, f"emu_test did not report a clean run: {tail}"
    assert tail.count("ok   ") > 0 or "ok   " in r.stdout, "no case ran"


def test_refusals_under_emulation(emu_binary):
    # `emu_test plans` prints the planner's tiles and checks the refusal rule on the emulated H100: a halo too large
    # for shared memory and the int32-overflow geometry of the static review are refused (kRefused, nothing
    # launched) with a reason, and a normal layer is not.
    r = subprocess.run([emu_binary, "plans"], capture_output=True, text=True, timeout=600)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-4000:]
    assert "refusals ok" in out, out[-4000:]
    assert "does not fit in shared memory" in out, out[-4000:]
