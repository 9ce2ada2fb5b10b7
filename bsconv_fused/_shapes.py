"""Shape arithmetic and argument validation: the one place that knows the BSConvU geometry.

Every consumer (reference path, fake kernels, Triton launchers, the C++ glue's Python side, benchmarks) takes its
output size and its normalised stride/padding/dilation from here, so the fast paths and the oracle cannot drift.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Tuple, Union

import torch

IntOrPair = Union[int, Sequence[int]]

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def pair(name: str, value: IntOrPair, minimum: int) -> Tuple[int, int]:
    """Normalise an int or a length-2 sequence to a pair of ints >= ``minimum``; raise naming ``name`` otherwise."""
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an int or a pair of ints, got a bool ({value!r})")
    if isinstance(value, int):
        out = (value, value)
    else:
        try:
            out = tuple(value)
        except TypeError:
            raise TypeError(f"{name} must be an int or a pair of ints, got {type(value).__name__}") from None
        if len(out) == 1:
            out = (out[0], out[0])
        if len(out) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in out):
            raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")
    if min(out) < minimum:
        raise ValueError(f"{name} must be >= {minimum} in every dimension, got {value!r}")
    return out  # type: ignore[return-value]


def conv_out_size(size: int, kernel: int, stride: int, padding: int, dilation: int) -> int:
    """Output length of a convolution along one axis (PyTorch's formula)."""
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


@dataclass(frozen=True)
class Geometry:
    """Everything a kernel needs to know about one BSConvU call, validated."""

    N: int
    C_in: int
    C_out: int
    H: int
    W: int
    kh: int
    kw: int
    stride: Tuple[int, int]
    padding: Tuple[int, int]
    dilation: Tuple[int, int]

    @property
    def Ho(self) -> int:
        return conv_out_size(self.H, self.kh, self.stride[0], self.padding[0], self.dilation[0])

    @property
    def Wo(self) -> int:
        return conv_out_size(self.W, self.kw, self.stride[1], self.padding[1], self.dilation[1])

    @property
    def out_shape(self) -> Tuple[int, int, int, int]:
        return (self.N, self.C_out, self.Ho, self.Wo)


def _check_tensor(name: str, t: torch.Tensor) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must have a floating dtype (float16, bfloat16, float32, float64), got {t.dtype}")


def pw_as_matrix(pw_weight: torch.Tensor) -> torch.Tensor:
    """View a pointwise weight (C_out, C_in, 1, 1) or (C_out, C_in) as the (C_out, C_in) matrix."""
    if pw_weight.dim() == 4:
        return pw_weight.reshape(pw_weight.shape[0], pw_weight.shape[1])
    return pw_weight


def validate(
    x: torch.Tensor,
    pw_weight: torch.Tensor,
    dw_weight: torch.Tensor,
    bias: Optional[torch.Tensor],
    mid_bias: Optional[torch.Tensor],
    stride: IntOrPair,
    padding: IntOrPair,
    dilation: IntOrPair,
) -> Geometry:
    """Check every argument of a BSConvU call and return its geometry. Errors name the argument and the rule."""
    _check_tensor("x", x)
    _check_tensor("pw_weight", pw_weight)
    _check_tensor("dw_weight", dw_weight)
    if x.dim() != 4:
        raise ValueError(f"x must be 4-D (N, C_in, H, W), got {x.dim()}-D with shape {tuple(x.shape)}")
    N, C_in, H, W = x.shape
    if pw_weight.dim() == 4:
        if tuple(pw_weight.shape[2:]) != (1, 1):
            raise ValueError(f"pw_weight must have shape (C_out, C_in, 1, 1) or (C_out, C_in), got {tuple(pw_weight.shape)}")
    elif pw_weight.dim() != 2:
        raise ValueError(f"pw_weight must have shape (C_out, C_in, 1, 1) or (C_out, C_in), got {tuple(pw_weight.shape)}")
    C_out = pw_weight.shape[0]
    if pw_weight.shape[1] != C_in:
        raise ValueError(f"pw_weight has {pw_weight.shape[1]} input channels but x has C_in={C_in} (x.shape[1] must equal pw_weight.shape[1])")
    if dw_weight.dim() != 4 or dw_weight.shape[1] != 1:
        raise ValueError(f"dw_weight must have shape (C_out, 1, kh, kw), got {tuple(dw_weight.shape)}")
    if dw_weight.shape[0] != C_out:
        raise ValueError(f"dw_weight has {dw_weight.shape[0]} channels but pw_weight has C_out={C_out} (they must match)")
    kh, kw = int(dw_weight.shape[2]), int(dw_weight.shape[3])
    if kh < 1 or kw < 1:
        raise ValueError(f"dw_weight kernel size must be >= 1, got {(kh, kw)}")
    for name, t in (("bias", bias), ("mid_bias", mid_bias)):
        if t is None:
            continue
        _check_tensor(name, t)
        if t.dim() != 1 or t.shape[0] != C_out:
            raise ValueError(f"{name} must have shape (C_out,) = ({C_out},), got {tuple(t.shape)}")
    tensors = [("x", x), ("pw_weight", pw_weight), ("dw_weight", dw_weight), ("bias", bias), ("mid_bias", mid_bias)]
    devices = {t.device for _, t in tensors if t is not None}
    if len(devices) > 1:
        desc = ", ".join(f"{n} on {t.device}" for n, t in tensors if t is not None)
        raise ValueError(f"all tensors must be on the same device, got {desc}")
    dtypes = {t.dtype for _, t in tensors if t is not None}
    if len(dtypes) > 1:
        desc = ", ".join(f"{n} {t.dtype}" for n, t in tensors if t is not None)
        raise TypeError(f"all tensors must have the same dtype, got {desc}")
    if C_in == 0 or C_out == 0:
        raise ValueError(f"the channel counts must be non-zero, got x {tuple(x.shape)} (C_in={C_in}), C_out={C_out}")
    geom = Geometry(
        N=N, C_in=C_in, C_out=C_out, H=H, W=W, kh=kh, kw=kw,
        stride=pair("stride", stride, 1),
        padding=pair("padding", padding, 0),
        dilation=pair("dilation", dilation, 1),
    )
    if geom.Ho < 1 or geom.Wo < 1:
        raise ValueError(
            f"the output would be empty: input {H}x{W}, kernel {kh}x{kw}, stride {geom.stride}, padding {geom.padding}, "
            f"dilation {geom.dilation} give {geom.Ho}x{geom.Wo}; the padded input must be at least the dilated kernel size"
        )
    return geom


def suggest_memory_format(x: torch.Tensor) -> torch.memory_format:
    """The layout the output should take: channels_last when x is in it (and not also NCHW-contiguous)."""
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format


def empty_output(x: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Allocate an output (y or dx) of ``shape`` in x's memory format: the layout contract of every backend."""
    return torch.empty(tuple(shape), dtype=x.dtype, device=x.device, memory_format=suggest_memory_format(x))
