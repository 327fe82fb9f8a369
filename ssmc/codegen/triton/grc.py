"""The GRC cell's elementwise parts as Triton kernels (GPU; the interpreter in tests).

Same contract as ssmc.codegen.tvm.grc: the GEMMs run in the library (torch), these do

* ``gelu_``: h <- GELU(h) in place (erf form, as F.gelu);
* ``grc_epilogue``: out = LayerNorm(sigmoid(f1) l + sigmoid(f2) r + sigmoid(i) p) with
  g = [f1; f2; i; p] (P, 4d), lr = [l; r] (P, 2d): one program per row, the row in registers
  (BLOCK_D = next power of two >= d), mean and variance by two reductions.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ssmc.codegen.grc_args import check_epilogue, check_rows, width
from ssmc.codegen.triton.common import check_same_device, next_pow2

GELU_BLOCK = 1024


@triton.jit
def _gelu_kernel(h_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    x = tl.load(h_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    y = 0.5 * x * (1.0 + tl.math.erf(x * 0.7071067811865476))
    tl.store(h_ptr + offs, y, mask=mask)


@triton.jit
def _grc_epilogue_kernel(g_ptr, lr_ptr, w_ptr, b_ptr, out_ptr, d, eps,
                         BLOCK_D: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK_D)
    mask = offs < d
    g = g_ptr + row * 4 * d
    lr = lr_ptr + row * 2 * d
    f1 = tl.load(g + offs, mask=mask, other=0.0)
    f2 = tl.load(g + d + offs, mask=mask, other=0.0)
    gi = tl.load(g + 2 * d + offs, mask=mask, other=0.0)
    p = tl.load(g + 3 * d + offs, mask=mask, other=0.0)
    left = tl.load(lr + offs, mask=mask, other=0.0)
    right = tl.load(lr + d + offs, mask=mask, other=0.0)
    mix = tl.sigmoid(f1) * left + tl.sigmoid(f2) * right + tl.sigmoid(gi) * p
    mix = tl.where(mask, mix, 0.0)
    mean = tl.sum(mix, axis=0) / d
    diff = tl.where(mask, mix - mean, 0.0)
    var = tl.sum(diff * diff, axis=0) / d
    rstd = 1.0 / tl.sqrt(var + eps)
    w = tl.load(w_ptr + offs, mask=mask, other=0.0)
    b = tl.load(b_ptr + offs, mask=mask, other=0.0)
    tl.store(out_ptr + row * d + offs, diff * rstd * w + b, mask=mask)


def gelu_(h: torch.Tensor) -> torch.Tensor:
    """h <- GELU(h) in place; h (P, width) fp32, row-contiguous.  Returns h."""
    check_rows("h", h, width(h))
    check_same_device("h", h)
    n = h.numel()
    if n:
        _gelu_kernel[(triton.cdiv(n, GELU_BLOCK),)](h, n, BLOCK=GELU_BLOCK)
    return h


def grc_epilogue(g, lr, w, b, eps: float, out):
    """out (P, d) = LayerNorm(sigmoid(f1) l + sigmoid(f2) r + sigmoid(i) p) * w + b."""
    d = check_epilogue(g, lr, out)
    check_same_device("out", out, g=g, lr=lr, w=w, b=b)
    if out.shape[0]:
        _grc_epilogue_kernel[(out.shape[0],)](g, lr, w.contiguous(), b.contiguous(), out, d,
                                              float(eps), BLOCK_D=next_pow2(d),
                                              num_warps=4 if d <= 1024 else 8)
    return out
