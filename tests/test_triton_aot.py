"""Every Triton kernel the launchers make, compiled ahead of time for sm_80 and sm_90 in fp32, fp16 and bf16.

The real compiler catches what the interpreter accepts and a GPU would not (tl.dot shapes, layouts, shared memory,
bf16 lowering). It cannot compile interpreted kernels, and tests/conftest.py turns the interpreter on, so the
compilation runs in a subprocess with TRITON_INTERPRET unset.
"""
import os
import subprocess
import sys

import pytest

pytest.importorskip("triton")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ACT = {"silu": 4, "hardswish": 3}  # bsconv_fused/activation.py's codes


def _compile(args):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    r = subprocess.run([sys.executable, "-m", "bsconv_fused.triton.aot", *args], env=env, cwd=ROOT,
                       capture_output=True, text=True, timeout=1800)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r.stdout


@pytest.mark.parametrize("arch", [80, 90])
def test_main_case_all_dtypes(arch):
    out = _compile(["--arch", str(arch), "--dtype", "float32", "float16", "bfloat16", "--case", "0"])
    # forward, dx, weight-gradient lead + non-lead launches, for each of the three dtypes
    assert out.count("kernel=") == 12, out
    assert "compiled 12 kernels" in out
    # no register spills: a spilling kernel is several times slower on the GPU (the cubin's stack size says it)
    stacks = [line for line in out.splitlines() if "stack=" in line]
    assert len(stacks) == 12, out
    assert all(" stack=0 " in line for line in stacks), "\n".join(stacks)


@pytest.fixture(scope="module")
def other_geometries_sm90_bf16():
    # rectangular dilated kernel with C_in=3, and a deep 7x7 map: the other plan shapes
    out = _compile(["--arch", "90", "--dtype", "bfloat16", "--case", "2", "3"])
    rows = [line for line in out.splitlines() if "kernel=" in line]
    return out, rows


def test_other_geometries_sm90_bf16(other_geometries_sm90_bf16):
    out, rows = other_geometries_sm90_bf16
    # forward and the backward launches of each case: case 2 runs the fused dx + d_pw launch and LEAD (3 kernels),
    # case 3 (C_out = 256) the dx, LEAD and d_pw launches (4)
    assert len(rows) == 7 and "compiled 7 kernels" in out, out
    assert all(" stack=" in r and " regs=" in r for r in rows), out
    # (the LEAD kernel of case 2, a rectangular dilated 2x7 kernel with C_in=3, had a 16-byte stack frame once)
    spilled = [r for r in rows if " stack=0 " not in r]
    assert not spilled, "\n".join(spilled)


@pytest.fixture(scope="module", params=[80, 90])
def fused_cases(request):
    # the fused dx + d_pw launch pinned at its largest blocks (128 x 128, channels_last) and on NCHW stride-2 5x5
    out = _compile(["--arch", str(request.param), "--dtype", "float32", "float16", "bfloat16", "--case", "4", "5"])
    return request.param, out, [line for line in out.splitlines() if "kernel=" in line]


def _known_sm80_frame(row):
    return row.startswith("arch=80 ") and "case=5" in row and "lead=True" in row


def test_fused_backward_all_dtypes(fused_cases):
    arch, out, rows = fused_cases
    # forward, fused dx + d_pw, LEAD for each case and dtype
    assert len(rows) == 18 and sum("kernel=bsconv_bwd_dxw_kernel" in r for r in rows) == 6, out
    spilled = [r for r in rows if " stack=0 " not in r and not _known_sm80_frame(r)]
    assert not spilled, "\n".join(spilled)


@pytest.mark.xfail(strict=True, reason="known: on sm_80 the LEAD kernel of case 5 (NCHW, 5x5, stride 2, 16 lanes) "
                                       "compiles with an 8-byte stack frame at 80 registers (none on sm_90, none at "
                                       "32 lanes, where sm_90 has one for 128->128@28 5x5); open work")
def test_fused_case_lead_without_stack_sm80(fused_cases):
    arch, _, rows = fused_cases
    if arch != 80:
        pytest.skip("sm_80 only: the sm_90 rows are checked above")
    lead = [r for r in rows if _known_sm80_frame(r)]
    assert lead and all(" stack=0 " in r for r in lead), lead


@pytest.mark.parametrize("act", ["silu", "hardswish"])
def test_forward_with_activation_epilogue_sm90(act):
    # the epilogue is one more constexpr variant of each forward kernel: it must compile without spills too (silu
    # and hardswish are the longest epilogues); the main case and the deep 7x7 case, every dtype
    out = _compile(["--arch", "90", "--dtype", "float32", "float16", "bfloat16", "--case", "0", "3",
                    "--activation", act])
    rows = [line for line in out.splitlines() if "kernel=" in line]
    assert len(rows) == 6 and "compiled 6 kernels" in out, out
    assert all("kernel=bsconv_fwd_" in r and f" act={ACT[act]} " in r for r in rows), out
    assert all(" stack=0 " in r for r in rows), "\n".join(rows)


@pytest.mark.parametrize("arch", [80, 90])
def test_rows_forward_without_spills(arch):
    # the whole-rows forward (bsconv_fwd_rows_kernel) at the deep suite shapes, in every dtype: the plan's register
    # budget (plan.ROWS_MAX_TILE_VALUES) must hold without spills on both architectures
    out = _compile(["--arch", str(arch), "--dtype", "float32", "float16", "bfloat16", "--case", "6", "7", "8", "9"])
    rows = [line for line in out.splitlines() if "kernel=" in line]
    assert len(rows) == 12 and "compiled 12 kernels" in out, out
    assert all("kernel=bsconv_fwd_rows_kernel" in r for r in rows), out
    assert all(" stack=0 " in r for r in rows), "\n".join(rows)
