"""bsconv_fused: blueprint separable convolutions (BSConv) with the pointwise and depthwise steps fused in one pass.

Importing never fails for want of a GPU, Triton or the compiled extension: `available_backends()` says what runs.
"""
from .backends import BackendUnavailableError, FallbackWarning, available_backends
from .convert import BSConvS_Replacer, BSConvU_Replacer
from .convert import Surgery, convert_reference, replace_conv2d
from .functional import bsconv_u, bsconv_u_dense, bsconv_u_reference
from .inference import FusedBSConv, fuse_for_inference
from .modules import BSConvS, BSConvS_ModelRegLossMixin, BSConvU, reg_loss

__version__ = "0.1.0"

__all__ = [
    "bsconv_u", "bsconv_u_reference", "bsconv_u_dense", "available_backends", "FallbackWarning",
    "BackendUnavailableError", "BSConvU", "BSConvS", "BSConvS_ModelRegLossMixin", "reg_loss", "BSConvU_Replacer",
    "BSConvS_Replacer", "__version__",
    "replace_conv2d", "Surgery", "convert_reference",
]
__all__ += ["fuse_for_inference", "FusedBSConv"]
