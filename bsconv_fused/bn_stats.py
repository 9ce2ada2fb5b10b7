"""Training-mode BatchNorm after a pointwise conv, folded into the fused op: batch statistics from the conv's input.

A BatchNorm in training mode normalises ``t = A z + a`` (the pointwise conv's output, ``z`` its input) with the batch
statistics of ``t``. They follow from those of ``z`` without computing ``t``::

    mean_t = A mean_z + a            var_t[c] = A[c] Cov_z A[c]^T   (Cov_z: C_in x C_in over N, H, W)

so ``BN(t) = s * t + h`` with ``s = gamma / sqrt(var_t + eps)`` and ``h = beta - s * mean_t`` is again a pointwise
conv (weight ``s A``) plus a ``mid_bias`` (``s a + h``), which the fused op takes. Everything is differentiable torch
ops except :class:`_Moments` (mean and covariance of ``z``), whose backward is written out, so autograd gives exact
gradients for ``z``, the weights, gamma and beta, and ``t`` is never stored.

Precision: the moments are computed in float32 (float64 for float64 inputs) by the two-pass centered method (mean
first, then the Gram matrix of ``z - mean``), so a large common offset in ``z`` does not cancel the variance away.
Under SyncBatchNorm the ranks all-reduce the sum and count (C_in + 1 values), then the Gram matrix centered on the
global mean (C_in^2 values): still fully centered, two collectives. Note that with TF32 matmuls enabled on a GPU the
Gram matrix is computed in TF32 like every other fp32 matmul.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = ["stats_dtype", "input_moments", "sync_group", "needs_batch_stats", "update_running_stats",
           "fold_chain", "PointwiseStep", "batch_count", "eval_scale_shift"]

# elements per chunk of the centered copy of z in the Gram computation: bounds the temporary to 64 MiB of fp32
_CHUNK_ELEMS = 1 << 24


def stats_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for half precisions and float32, float64 for float64."""
    return torch.promote_types(dtype, torch.float32)


def _centered_gram(z: torch.Tensor, mean: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """sum over N, H, W of (z - mean)(z - mean)^T, in ``dtype``, chunked over the batch to bound the temporary."""
    N, C = z.shape[0], z.shape[1]
    per_sample = max(1, z[0].numel())
    step = max(1, _CHUNK_ELEMS // per_sample)
    gram = torch.zeros(C, C, dtype=dtype, device=z.device)
    shift = mean.view(C, 1, 1, 1)
    for n0 in range(0, N, step):
        zt = z[n0:n0 + step].transpose(0, 1)  # (C, n, H, W), a view in any layout
        # one contiguous copy (rows are channels), centered in place; (an out= buffer does not trace under Dynamo)
        zc = zt.to(dtype=dtype, memory_format=torch.contiguous_format, copy=True).sub_(shift)
        rows = zc.view(C, -1)
        gram.addmm_(rows, rows.t())
    return gram


class _Moments(torch.autograd.Function):
    """(mean, biased covariance, count) of z over N, H, W; all-reduced over ``group`` when it is not None.

    Backward: with G = dL/dCov and g = dL/dmean (summed over the ranks under sync, as SyncBatchNorm does with its
    statistics' gradients), dz_p = (G + G^T)/n (z_p - mean) + g/n. The covariance's dependence on the mean drops out
    because the centered values sum to zero over the (global) batch.
    """

    @staticmethod
    def forward(ctx, z: torch.Tensor, group):
        dtype = stats_dtype(z.dtype)
        C = z.shape[1]
        local = z.numel() // C
        with torch.no_grad():
            if group is None:
                count = torch.tensor(float(local), dtype=dtype, device=z.device)
                mean = z.mean(dim=(0, 2, 3), dtype=dtype)
            else:
                import torch.distributed as dist

                buf = torch.cat([z.sum(dim=(0, 2, 3), dtype=dtype),
                                 torch.tensor([float(local)], dtype=dtype, device=z.device)])
                dist.all_reduce(buf, group=group)
                count = buf[C].clone()
                mean = buf[:C] / count
            gram = _centered_gram(z, mean, dtype)
            if group is not None:
                dist.all_reduce(gram, group=group)
            cov = gram / count
        ctx.save_for_backward(z, mean, count)
        ctx.group = group
        ctx.mark_non_differentiable(count)
        return mean, cov, count

    @staticmethod
    def backward(ctx, g_mean, g_cov, _g_count):
        z, mean, count = ctx.saved_tensors
        C = z.shape[1]
        if g_mean is None:
            g_mean = torch.zeros_like(mean)
        if g_cov is None:
            g_cov = torch.zeros(C, C, dtype=mean.dtype, device=mean.device)
        if ctx.group is not None:
            import torch.distributed as dist

            buf = torch.cat([g_mean.reshape(-1), g_cov.reshape(-1)]).contiguous()
            dist.all_reduce(buf, group=ctx.group)
            g_mean, g_cov = buf[:C], buf[C:].view(C, C)
        sym = (g_cov + g_cov.t()) / count
        # the centered input again (not saved: it would double the saved activations); a 1x1 conv applies sym in
        # z's own memory format
        zc = z.to(mean.dtype) - mean.view(1, C, 1, 1)
        dz = F.conv2d(zc, sym[:, :, None, None], g_mean / count)
        return dz.to(z.dtype), None


def sync_group(bn: nn.Module):
    """The process group a SyncBatchNorm in training mode reduces over, or None (local statistics).

    Mirrors nn.SyncBatchNorm.forward: sync in training mode when torch.distributed is initialised and the group
    (``bn.process_group`` or the world) has more than one rank."""
    if not isinstance(bn, nn.SyncBatchNorm) or not bn.training:
        return None
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return None
    group = bn.process_group or dist.group.WORLD
    return group if dist.get_world_size(group) > 1 else None


def input_moments(z: torch.Tensor, group=None) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mean (C,), biased covariance (C, C), count) of ``z`` (N, C, H, W) over N, H and W, differentiable in z.

    In float32 (float64 for float64 z), centered two-pass. ``group``: a process group to all-reduce over, or None.
    """
    if z.dim() != 4:
        raise ValueError(f"z must be 4-D (N, C, H, W), got shape {tuple(z.shape)}")
    return _Moments.apply(z, group)


def needs_batch_stats(bn: _BatchNorm) -> bool:
    """Whether ``bn`` normalises with batch statistics (training mode, or no running statistics), as
    _BatchNorm.forward decides."""
    return bn.training or bn.running_mean is None or bn.running_var is None


def update_running_stats(bn: _BatchNorm, mean: torch.Tensor, var_biased: torch.Tensor, count: torch.Tensor) -> None:
    """Update ``bn``'s running statistics and num_batches_tracked exactly as its own training-mode forward would.

    momentum=None is the cumulative average (factor 1/num_batches_tracked); the running variance is the unbiased
    batch variance (count / (count - 1)); nothing happens unless bn is training and tracks running statistics."""
    if not (bn.training and bn.track_running_stats):
        return
    factor = 0.0 if bn.momentum is None else bn.momentum
    if bn.num_batches_tracked is not None:
        bn.num_batches_tracked.add_(1)
        if bn.momentum is None:
            factor = 1.0 / float(bn.num_batches_tracked)
    if bn.running_mean is None or bn.running_var is None:
        return
    with torch.no_grad():
        mean, var_biased = mean.detach(), var_biased.detach()
        unbiased = var_biased * (count / (count - 1))
        rm, rv = bn.running_mean, bn.running_var
        rm.copy_(rm.to(mean.dtype) * (1.0 - factor) + mean * factor)
        rv.copy_(rv.to(unbiased.dtype) * (1.0 - factor) + unbiased * factor)


# ------------------------------------------------------------------------------------------- the fold chain
class PointwiseStep:
    """A pointwise conv in a fold chain: its weight as a (C_out, C_in) matrix."""

    def __init__(self, weight: torch.Tensor):
        self.weight = weight


Step = Union[PointwiseStep, Tuple[str, _BatchNorm]]


def eval_scale_shift(bn: _BatchNorm, dtype: torch.dtype) -> Tuple[torch.Tensor, torch.Tensor]:
    """Eval-mode BatchNorm as ``scale * t + shift`` per channel, differentiable in bn.weight and bn.bias."""
    scale = torch.rsqrt(bn.running_var.to(dtype) + bn.eps)
    if bn.weight is not None:  # affine=False leaves weight and bias None: the identity affine map
        scale = scale * bn.weight.to(dtype)
    shift = -bn.running_mean.to(dtype) * scale
    if bn.bias is not None:
        shift = shift + bn.bias.to(dtype)
    return scale, shift


def fold_chain(steps: Sequence[Step], dtype: torch.dtype, z: Optional[torch.Tensor] = None
               ) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
    """Fold a chain of pointwise convs and BatchNorms applied to ``z`` into one affine map ``t = A z + a``.

    steps: PointwiseStep or (name, bn), in order. Returns (A (C_out, C_in) or None for the identity, a or None), in
    ``dtype``. A BatchNorm that needs batch statistics takes them from the moments of ``z`` (computed once, all-reduced
    when the BN is a synchronising SyncBatchNorm) and has its running statistics updated; ``z`` is then required.
    """
    A: Optional[torch.Tensor] = None
    a: Optional[torch.Tensor] = None
    moments = None
    for step in steps:
        if isinstance(step, PointwiseStep):
            w = step.weight.to(dtype)
            A = w if A is None else w @ A
            a = None if a is None else w @ a
            continue
        name, bn = step
        if not needs_batch_stats(bn):
            s, h = eval_scale_shift(bn, dtype)
        else:
            if z is None:
                raise ValueError(f"{name} needs batch statistics: fold_chain needs the input z")
            group = sync_group(bn)
            if moments is None or moments[0] is not group:
                moments = (group,) + input_moments(z, group)
            _, mean_z, cov_z, count = moments
            mean_t = mean_z if A is None else A @ mean_z
            if a is not None:
                mean_t = mean_t + a
            if A is None:
                var_t = torch.diagonal(cov_z)
            else:
                var_t = ((A @ cov_z) * A).sum(dim=1)
            # A Gram matrix is positive semi-definite; rounding may leave a tiny negative variance
            var_t = var_t.clamp(min=0)
            update_running_stats(bn, mean_t, var_t, count)
            s = torch.rsqrt(var_t + bn.eps)
            if bn.weight is not None:
                s = s * bn.weight.to(dtype)
            h = -s * mean_t
            if bn.bias is not None:
                h = h + bn.bias.to(dtype)
        A = torch.diag(s) if A is None else s[:, None] * A
        a = h if a is None else s * a + h
    return A, a


def batch_count(z: torch.Tensor) -> int:
    """Values per channel of z in this process (N * H * W)."""
    return z.shape[0] * z.shape[2] * z.shape[3]
