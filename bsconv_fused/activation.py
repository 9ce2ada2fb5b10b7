"""The activation epilogue of the fused forward, the Python side shared by every backend:
y = act(DW(PW(x) + mid_bias) + bias).

The forward ops take the activation as a trailing ``int activation=0`` (one of :data:`ACTIVATION_CODES`); the
kernels apply it to their fp32 accumulator after the bias, before the cast to y's dtype (Triton: the ``ACT``
constexpr of bsconv_fused/triton/epilogue.py; the extension: csrc/activation.h). The codes are part of the ops'
schemas: they never change meaning. The "torch" backend, the gradient path and the tests apply :func:`apply` (the
torch functions) instead.

The epilogue is for inference: the ops' backwards are those of the op without activation, so an op called with an
activation refuses autograd (ops.register_pair), and bsconv_u runs the activation as a torch op after the fused op
whenever autograd needs gradients.
"""
from __future__ import annotations

from typing import Callable, Dict, Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ACTIVATION_CODES", "ACTIVATION_NAMES", "code_of", "name_of", "apply", "module_name"]

# name (bsconv_fused's ``activation=`` arguments) -> code of the ops' ``activation`` argument
ACTIVATION_CODES: Dict[str, int] = {"none": 0, "relu": 1, "relu6": 2, "hardswish": 3, "silu": 4}
ACTIVATION_NAMES = tuple(ACTIVATION_CODES)
_NAME_OF_CODE = {c: n for n, c in ACTIVATION_CODES.items()}

_TORCH: Dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "relu": F.relu, "relu6": F.relu6, "hardswish": F.hardswish, "silu": F.silu,
}

# the modules fuse_for_inference moves into the epilogue, 1:1 (none of them has a parameter that changes the math;
# ``inplace`` does not)
_MODULES = {nn.ReLU: "relu", nn.ReLU6: "relu6", nn.Hardswish: "hardswish", nn.SiLU: "silu"}


def code_of(activation: Optional[str], argument: str = "activation") -> int:
    """The op code of an activation name (None and "none": 0). Raises ValueError naming ``argument`` and the
    choices for anything else."""
    if activation is None:
        return 0
    if isinstance(activation, str) and activation in ACTIVATION_CODES:
        return ACTIVATION_CODES[activation]
    raise ValueError(f"{argument} must be None or one of {ACTIVATION_NAMES}, got {activation!r}")


def name_of(code: int) -> str:
    """The name of an op code; raises ValueError (naming the argument and the choices) for an unknown one."""
    if isinstance(code, int) and not isinstance(code, bool) and code in _NAME_OF_CODE:
        return _NAME_OF_CODE[code]
    raise ValueError(f"activation must be one of the codes {dict(ACTIVATION_CODES)}, got {code!r}")


def apply(y: torch.Tensor, activation: Union[str, int, None]) -> torch.Tensor:
    """The torch reference of the epilogue: the activation (a name or a code) applied to y, differentiably."""
    name = name_of(activation) if isinstance(activation, int) and not isinstance(activation, bool) else activation
    code = code_of(name)
    return y if code == 0 else _TORCH[name](y)


def module_name(module: Optional[nn.Module]) -> Optional[str]:
    """The epilogue name of an activation module: "none" for None, the name for an nn.ReLU, nn.ReLU6, nn.Hardswish
    or nn.SiLU (exact types: a subclass may change forward, so it is never assumed to be the same function), None
    for any other module (it has to run as itself)."""
    if module is None:
        return "none"
    return _MODULES.get(type(module))
