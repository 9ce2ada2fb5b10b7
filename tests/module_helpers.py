"""Helpers shared by the module tests."""
import torch
from torch import nn


def randomize(module: nn.Module, seed: int, mean_scale: float = 1.0, var_scale: float = 2.0,
              var_floor: float = 0.3) -> nn.Module:
    """Give every parameter and BN statistic non-trivial values (default BN stats would hide a wrong fold)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype))
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d) and m.running_mean is not None:
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g, dtype=m.running_mean.dtype)
                                     * mean_scale)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g, dtype=m.running_var.dtype)
                                    * var_scale + var_floor)
                m.num_batches_tracked.fill_(7)
    return module
