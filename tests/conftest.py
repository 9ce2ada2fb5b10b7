"""Test fixtures. The interpreter switch (TRITON_INTERPRET) is set in the root conftest.py."""
import os

import pytest
import torch


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
