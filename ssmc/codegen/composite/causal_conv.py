"""The depthwise causal conv1d (semantics.glue.causal_conv1d) as k shifted multiply-adds over
channels-last (b, L, c) views, for training on the CPU.

torch's depthwise conv1d (mkldnn) needs a transpose to channels-first and is slow at the
sizes of an SSM block's conv (k = 4: measured 3.5 ms forward and 0.9 ms backward for b8 L64
c128, and 6.7 ms forward for b2 L1024 c384); k fused multiply-adds over the padded input are a
few passes of memory each, and autograd differentiates them into the same few passes.  The
TVM kernel (codegen/tvm/causal_conv_tir.py) is faster still but has no backward, so it runs at
inference only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

MAX_TAPS = 16  # beyond this the k passes cost more than one convolution


def causal_conv1d_shifted(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                          activation: str | None = None) -> torch.Tensor:
    """y[t] = sum_j w[j] x[t - (k - 1) + j] + bias (zeros before t = 0), then silu if asked;
    x (b, L, c), weight (c, 1, k) or (c, k), bias (c,)."""
    w = weight.reshape(weight.shape[0], -1)  # (c, k)
    k, L = w.shape[1], x.shape[1]
    xp = F.pad(x, (0, 0, k - 1, 0))          # k - 1 zeros before t = 0
    y = xp[:, 0:L] * w[:, 0] if bias is None else torch.addcmul(bias, xp[:, 0:L], w[:, 0])
    for j in range(1, k):
        y = torch.addcmul(y, xp[:, j:j + L], w[:, j])
    if activation == "silu":
        y = F.silu(y)
    elif activation not in (None, "identity"):
        raise ValueError(f"causal_conv1d_shifted: activation must be silu or identity, "
                         f"got {activation!r}")
    return y
