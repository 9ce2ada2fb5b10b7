"""Test session setup.

Without a GPU the Triton kernels run in the interpreter on CPU tensors. TRITON_INTERPRET must be set before any
@triton.jit decorator runs, i.e. before bsconv_fused.triton is imported, so it is set here, at collection start.
On a GPU machine it is left unset and the same parity tests run the compiled kernels on CUDA tensors.
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture
def triton_device():
    """The device the Triton backend runs on here: CUDA when present, else the CPU through the interpreter."""
    if torch.cuda.is_available():
        return "cuda"
    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("no GPU and TRITON_INTERPRET is not 1")
    return "cpu"
