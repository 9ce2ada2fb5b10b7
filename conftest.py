"""Root pytest setup, loaded before any test module of tests/ or benchmarks/ is imported.

Without a GPU the Triton kernels run in the interpreter on CPU tensors. TRITON_INTERPRET must be set before any
@triton.jit decorator runs (before bsconv_fused.triton is imported), so it is set here. On a GPU machine it is
left unset and the same tests run the compiled kernels on CUDA tensors.
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_configure(config):
    # A silent fallback to the two-layer path must not pass a test that meant to run a fused kernel: every
    # FallbackWarning is an error unless a test expects it (pytest.warns) or filters it. Added here rather than in
    # pyproject.toml: pytest imports a filter's warning class at startup, and importing bsconv_fused (hence triton)
    # before TRITON_INTERPRET is set above would define Triton's own helpers as compiled-only functions.
    config.addinivalue_line("filterwarnings", "error::bsconv_fused.backends.FallbackWarning")
