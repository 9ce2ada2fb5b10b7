"""torch.library custom ops: the one door torch.compile and autograd see for every fused backend.

Each fused backend contributes a pair of ops in the ``bsconv_fused`` namespace with the same schemas:

    <name>_forward(x, pw[C_out, C_in], dw[C_out, 1, kh, kw], bias?, mid_bias?, stride[2], padding[2],
                   dilation[2], activation=0) -> y
    <name>_backward(grad_y, x, pw, dw, mid_bias?, stride, padding, dilation, output_mask[5]) -> (dx, dpw, ddw, dbias, dmid)

The Triton pair is defined here in Python; the extension's ``cpp_forward`` / ``cpp_backward`` are declared in C++
(TORCH_LIBRARY in csrc/bsconv_fused.cpp) and get their fake kernels and autograd from :func:`register_pair`.

Contracts shared by every pair (the fake kernels below encode them, the real kernels must follow them):
- y and dx take x's memory format (channels_last stays channels_last); weight gradients are dense, in the weight dtype.
- a gradient whose output_mask entry is False comes back as an empty (0,) tensor: custom ops cannot return None.
- the forward saves x and the weights, never the intermediate: the backward recomputes it.
- ``activation`` (a code of bsconv_fused/activation.py, 0: none) is the forward's inference epilogue,
  y = act(DW(PW(x) + mid_bias) + bias). The backward ops compute the gradients of the op without it, so autograd
  through a forward called with an activation raises when it is recorded (bsconv_u runs the activation as a torch
  op when gradients are needed).
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch

from ._shapes import conv_out_size, empty_output

NAMESPACE = "bsconv_fused"
GRAD_NAMES = ("x", "pw_weight", "dw_weight", "bias", "mid_bias")


def forward_out_shape(x: torch.Tensor, dw: torch.Tensor, stride, padding, dilation) -> Tuple[int, int, int, int]:
    N, _, H, W = x.shape
    kh, kw = dw.shape[2], dw.shape[3]
    return (N, dw.shape[0], conv_out_size(H, kh, stride[0], padding[0], dilation[0]),
            conv_out_size(W, kw, stride[1], padding[1], dilation[1]))


def empty_grad(ref: torch.Tensor) -> torch.Tensor:
    return ref.new_empty((0,))


def backward_outputs_like(x, pw, dw, mid_bias, output_mask) -> Tuple[torch.Tensor, ...]:
    """Allocate (or stand in empty tensors for) the five gradients, following the shared contract."""
    C_out = pw.shape[0]
    shapes = (None, tuple(pw.shape), tuple(dw.shape), (C_out,), (C_out,))
    outs = []
    for i, need in enumerate(output_mask):
        if not need:
            outs.append(empty_grad(x))
        elif i == 0:
            outs.append(empty_output(x, x.shape))
        else:
            outs.append(torch.empty(shapes[i], dtype=pw.dtype, device=x.device))
    return tuple(outs)


def _fake_forward(x, pw, dw, bias, mid_bias, stride, padding, dilation, activation=0):
    return empty_output(x, forward_out_shape(x, dw, stride, padding, dilation))


def _fake_backward(grad_y, x, pw, dw, mid_bias, stride, padding, dilation, output_mask):
    return backward_outputs_like(x, pw, dw, mid_bias, output_mask)


def _differentiable_backward(grad_y, x, pw, dw, mid_bias, conv_args, need):
    """The five gradients written with differentiable ATen ops (what the two-layer path's autograd computes), so a
    graph is built through them: the backward of the backward exists. t and dt are materialised here."""
    import torch.nn.functional as F

    stride, padding, dilation = conv_args
    C_out = pw.shape[0]
    t = F.conv2d(x, pw[:, :, None, None], mid_bias)
    dt = torch.nn.grad.conv2d_input(t.shape, dw, grad_y, stride, padding, dilation, groups=C_out)
    dx = F.conv2d(dt, pw.t()[:, :, None, None]) if need[0] else None
    dpw = torch.einsum("nohw,nihw->oi", dt, x) if need[1] else None
    ddw = torch.nn.grad.conv2d_weight(t, dw.shape, grad_y, stride, padding, dilation, groups=C_out) if need[2] else None
    dbias = grad_y.sum((0, 2, 3)) if need[3] else None
    dmid = dt.sum((0, 2, 3)) if need[4] else None
    return dx, dpw, ddw, dbias, dmid


def register_pair(forward_op, backward_op, *, register_fake: bool) -> None:
    """Give a forward/backward op pair its fake kernels (when not defined in Python already) and its autograd."""
    if register_fake:
        torch.library.register_fake(forward_op)(_fake_forward)
        torch.library.register_fake(backward_op)(_fake_backward)

    def setup_context(ctx, inputs, output):
        # Called only when autograd records the op (grad mode on and an input requiring grad).
        x, pw, dw, bias, mid_bias, stride, padding, dilation, activation = inputs
        if activation != 0:
            # The epilogue is inference-only: the backward ops compute the gradients of the op without it, and the
            # activation's own gradient needs its input, which the op never keeps. Refuse here, before a backward
            # could return the gradients of another function.
            raise RuntimeError(
                f"{forward_op}: activation={activation} (the inference epilogue) has no gradients, but an input "
                f"requires grad: call the op with activation=0 and apply the activation after it (what "
                f"bsconv_fused.functional.bsconv_u(..., activation=...) does when gradients are needed), or run "
                f"under torch.no_grad() / torch.inference_mode()")
        ctx.save_for_backward(x, pw, dw, mid_bias)
        ctx.conv_args = (list(stride), list(padding), list(dilation))
        ctx.has_bias = bias is not None

    def backward(ctx, grad_y):
        x, pw, dw, mid_bias = ctx.saved_tensors
        need = list(ctx.needs_input_grad[:5])
        need[3] = need[3] and ctx.has_bias
        need[4] = need[4] and mid_bias is not None
        if not any(need):
            return (None,) * 9
        if torch.is_grad_enabled():
            # create_graph=True (double backward: gradient penalties, Hessian-vector products): the fused backward
            # op has no derivative of its own, so this pass runs the two-layer path's differentiable backward on
            # the saved inputs. Same values; slower, and only where a second derivative is asked for.
            grads = _differentiable_backward(grad_y, x, pw, dw, mid_bias, ctx.conv_args, need)
        else:
            grads = backward_op(grad_y, x, pw, dw, mid_bias, *ctx.conv_args, need)
        return tuple(g if n else None for g, n in zip(grads, need)) + (None, None, None, None)

    torch.library.register_autograd(forward_op, backward, setup_context=setup_context)


# ----------------------------------------------------------------------------------------------- Triton pair
@torch.library.custom_op(f"{NAMESPACE}::triton_forward", mutates_args=())
def triton_forward(
    x: torch.Tensor, pw: torch.Tensor, dw: torch.Tensor, bias: Optional[torch.Tensor],
    mid_bias: Optional[torch.Tensor], stride: List[int], padding: List[int], dilation: List[int],
    activation: int = 0,
) -> torch.Tensor:
    from .triton import launch

    return launch.forward(x, pw, dw, bias, mid_bias, tuple(stride), tuple(padding), tuple(dilation), activation)


@torch.library.custom_op(f"{NAMESPACE}::triton_backward", mutates_args=())
def triton_backward(
    grad_y: torch.Tensor, x: torch.Tensor, pw: torch.Tensor, dw: torch.Tensor, mid_bias: Optional[torch.Tensor],
    stride: List[int], padding: List[int], dilation: List[int], output_mask: List[bool],
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    from .triton import launch

    return launch.backward(grad_y, x, pw, dw, mid_bias, tuple(stride), tuple(padding), tuple(dilation),
                           tuple(bool(m) for m in output_mask))


torch.library.register_fake(triton_forward)(_fake_forward)
torch.library.register_fake(triton_backward)(_fake_backward)
register_pair(triton_forward, triton_backward, register_fake=False)
