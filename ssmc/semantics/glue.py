"""Glue ops between SSM nodes, channel-last: activations are (b, L, c).

Each computes in fp32 (fp64 stays fp64) and returns the input dtype, like the scan oracles.
Parameter names follow torch (Conv1d's weight (c, 1, k) and bias, norms' weight/bias) so
checkpoints of mamba-style models load without renaming.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ssmc.errors import did_you_mean
from ssmc.semantics.recurrence import causal_conv_direct, causal_conv_fft, hrf_double_gamma


def _ct(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


# ------------------------------------------------------------------------------- activations

ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "silu": F.silu,
    "gelu": F.gelu,  # exact (erf) form, torch's default
    "relu": F.relu,
    "sigmoid": torch.sigmoid,
    "tanh": torch.tanh,
    "softplus": F.softplus,
    "identity": lambda x: x,
    "exp": torch.exp,
}


def activation(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """The activation function called `name`; ValueError (with a suggestion) otherwise."""
    try:
        return ACTIVATIONS[name]
    except KeyError:
        hint = did_you_mean(name, ACTIVATIONS)
        extra = f" (did you mean '{hint}'?)" if hint else ""
        raise ValueError(f"activation: unknown {name!r}, expected one of "
                         f"{sorted(ACTIVATIONS)}{extra}") from None


# --------------------------------------------------------------------------- split / concat

def split_last(x: torch.Tensor, sizes: Sequence[int]) -> tuple[torch.Tensor, ...]:
    """Split the last axis into pieces of the given sizes (they must add up to it)."""
    sizes = [int(s) for s in sizes]
    if sum(sizes) != x.shape[-1] or any(s < 0 for s in sizes):
        raise ValueError(f"sizes {sizes} do not split a last axis of {x.shape[-1]}")
    return tuple(torch.split(x, sizes, dim=-1))


def concat_last(xs: Sequence[torch.Tensor]) -> torch.Tensor:
    """Concatenate along the last axis."""
    return torch.cat(list(xs), dim=-1)


# ------------------------------------------------------------------------------ convolutions

def causal_conv1d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                  activation_name: str | None = None) -> torch.Tensor:
    """Depthwise causal conv (mamba's causal_conv1d, channel-last): output t sees inputs <= t.

    x: (b, L, c); weight: (c, k) or (c, 1, k); bias: (c,).  Like nn.Conv1d (cross-correlation):
    y[t] = sum_j weight[j] x[t - (k - 1) + j] + bias, zeros before t = 0.
    """
    ct = _ct(x)
    w = weight.to(ct)
    w = w[:, None] if w.dim() == 2 else w
    c, k = w.shape[0], w.shape[-1]
    L = x.shape[1]
    # pad k-1 on both sides and keep the first L outputs: mamba's own formulation
    y = F.conv1d(x.to(ct).transpose(1, 2), w, None if bias is None else bias.to(ct),
                 padding=k - 1, groups=c)[..., :L]
    if activation_name is not None:
        y = activation(activation_name)(y)
    return y.transpose(1, 2).to(x.dtype)


def check_positive_int(name: str, v) -> None:
    """Constructor validation: ValueError naming the argument unless v is an int >= 1."""
    if not isinstance(v, int) or isinstance(v, bool) or v < 1:
        raise ValueError(f"{name} must be a positive int, got {v!r}")


class CausalConv1d(nn.Module):
    """Depthwise causal conv over (b, L, c), nn.Conv1d's parameters (weight (c, 1, k), bias)."""

    def __init__(self, channels: int, kernel: int, bias: bool = True, device=None, dtype=None):
        super().__init__()
        check_positive_int("channels", channels)
        check_positive_int("kernel", kernel)
        fk = dict(device=device, dtype=dtype)
        self.channels, self.kernel = channels, kernel
        self.weight = nn.Parameter(torch.empty(channels, 1, kernel, **fk))
        self.bias = nn.Parameter(torch.empty(channels, **fk)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # nn.Conv1d's default: U(-1/sqrt(fan_in), 1/sqrt(fan_in)), fan_in = k for depthwise
        bound = 1.0 / math.sqrt(self.kernel)
        with torch.no_grad():
            for p in (self.weight, self.bias):
                if p is not None and not p.is_meta:
                    p.uniform_(-bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (b, L, c) -> (b, L, c)."""
        return causal_conv1d(x, self.weight, self.bias)


class LongConv(nn.Module):
    """Per-channel causal long convolution with a learnable kernel `kernel` (c, length).

    init "hrf": every channel starts from SPM's canonical HRF sampled every `tr` seconds
    (see recurrence.hrf_double_gamma); "random": N(0, 1/length).  method: "fft" or "direct".
    """

    def __init__(self, channels: int, length: int, init: str = "hrf", method: str = "fft",
                 tr: float = 2.0, device=None, dtype=None):
        super().__init__()
        check_positive_int("channels", channels)
        check_positive_int("length", length)
        if init not in ("hrf", "random"):
            raise ValueError(f"init must be 'hrf' or 'random', got {init!r}")
        if method not in ("fft", "direct"):
            raise ValueError(f"method must be 'fft' or 'direct', got {method!r}")
        if not tr > 0:
            raise ValueError(f"tr must be positive, got {tr!r}")
        self.channels, self.length = channels, length
        self.init, self.method, self.tr = init, method, tr
        self.kernel = nn.Parameter(torch.empty(channels, length, device=device, dtype=dtype))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        if self.kernel.is_meta:
            return
        with torch.no_grad():
            if self.init == "hrf":
                h = hrf_double_gamma(self.tr, self.length, dtype=self.kernel.dtype,
                                     device=self.kernel.device)
                self.kernel.copy_(h.expand_as(self.kernel))
            else:
                self.kernel.normal_(0.0, 1.0 / math.sqrt(self.length))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (b, L, c) -> (b, L, c)."""
        conv = causal_conv_fft if self.method == "fft" else causal_conv_direct
        return conv(x, self.kernel)


# ------------------------------------------------------------------------------------ norms

class RMSNorm(nn.Module):
    """y = x / sqrt(mean(x^2, last axis) + eps) * weight."""

    def __init__(self, dim: int, eps: float = 1e-5, device=None, dtype=None, groups: int = 1):
        super().__init__()
        check_positive_int("dim", dim)
        check_positive_int("groups", groups)
        if dim % groups:
            raise ValueError(f"groups ({groups}) must divide dim ({dim})")
        if not eps > 0:
            raise ValueError(f"eps must be positive, got {eps!r}")
        self.eps = eps
        self.groups = groups  # > 1: each of `groups` slices of the last axis normalised alone
        self.weight = nn.Parameter(torch.ones(dim, device=device, dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (..., dim) -> (..., dim)."""
        xf = x.to(_ct(x))
        if self.groups > 1:
            xg = xf.unflatten(-1, (self.groups, -1))
            xf = (xg * torch.rsqrt(xg.pow(2).mean(-1, keepdim=True) + self.eps)).flatten(-2)
            return (xf * self.weight.to(xf.dtype)).to(x.dtype)
        y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight.to(xf.dtype)
        return y.to(x.dtype)


class LayerNorm(nn.LayerNorm):
    """nn.LayerNorm (same parameters) that accepts fp16/bf16 input: fp32 inside, input dtype out."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ct = _ct(x)
        cast = lambda p: None if p is None else p.to(ct)  # noqa: E731
        return F.layer_norm(x.to(ct), self.normalized_shape, cast(self.weight), cast(self.bias),
                            self.eps).to(x.dtype)
