"""Root pytest setup, loaded before any test module of tests/ or benchmarks/ is imported.

Without a GPU the Triton kernels run in the interpreter on CPU tensors. TRITON_INTERPRET must be set before any
@triton.jit decorator runs (before bsconv_fused.triton is imported), so it is set here. On a GPU machine it is
left unset and the same tests run the compiled kernels on CUDA tensors.
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
