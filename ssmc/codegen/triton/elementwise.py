"""Elementwise pieces fused into the scan kernels' prologues and epilogues.

Only core `tl` operations: the interpreter has no extern_elementwise (libdevice) and the same
source must compile for CUDA and HIP.
"""

import triton
import triton.language as tl

# exp(x) == exp2(x * LOG2E); exp2 is the native instruction.  A constexpr, so kernels may read it.
LOG2E = tl.constexpr(1.4426950408889634)


@triton.jit
def log1p(y):
    # Goldberg's trick: (1 + y) is rounded, and log(w) * y / (w - 1) cancels that rounding, so
    # small y keeps its relative accuracy without a log1p instruction.
    w = 1.0 + y
    return tl.where(w == 1.0, y, tl.log(w) * (y / (w - 1.0)))


@triton.jit
def softplus(x):
    # torch.nn.functional.softplus with its default threshold 20 (beyond it fp32 returns x).
    return tl.where(x > 20.0, x, log1p(tl.exp(tl.minimum(x, 20.0))))


@triton.jit
def silu(x):
    return x * tl.sigmoid(x)
