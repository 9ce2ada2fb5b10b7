"""The activation epilogue shared by every Triton forward kernel: y = act(DW(PW(x) + mid_bias) + bias).

The kernels take ``ACT: tl.constexpr`` (one of the codes below) and call :func:`apply_activation` on their fp32
accumulator after the bias, before the cast to y's dtype; code 0 compiles to nothing. The codes are part of the
ops' schema (the ``activation`` int argument), so they never change meaning.

NaN handling follows torch (relu(nan) = nan): comparisons written so a NaN fails them and passes through, rather
than tl.maximum, whose default NaN policy is unspecified.
"""
import triton
import triton.language as tl

# name (as in bsconv_fused's ``activation=`` arguments) -> code passed to the kernels as ACT; defined once for every
# backend in bsconv_fused/activation.py (the extension's copy, csrc/activation.h, is checked against it by the tests)
from ..activation import ACTIVATION_CODES  # noqa: F401  (re-exported)


@triton.jit
def apply_activation(acc, ACT: tl.constexpr):
    if ACT == 1:
        acc = tl.where(acc < 0.0, 0.0, acc)
    elif ACT == 2:
        acc = tl.where(acc < 0.0, 0.0, tl.where(acc > 6.0, 6.0, acc))
    elif ACT == 3:
        # x * relu6(x + 3) / 6, as torch.nn.functional.hardswish
        r = acc + 3.0
        r = tl.where(r < 0.0, 0.0, tl.where(r > 6.0, 6.0, r))
        acc = acc * r / 6.0
    elif ACT == 4:
        acc = acc * tl.sigmoid(acc)
    return acc
