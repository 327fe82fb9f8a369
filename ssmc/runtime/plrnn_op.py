"""The TVM PLRNN kernels (ssmc.codegen.tvm.plrnn) as torch.library custom ops.

    ssmc::plrnn(s, A, W, h0, C, z0, hrf, taps, config, cache) -> (z (b, L, M), zc)
    ssmc::plrnn_bwd(gz, s, A, W, C, z0, z, need, config, cache)
        -> (ds, dA, dW, dh0, dC, dz0)

Both compute in fp32 and return fp32 (the autograd formula casts the gradients to the inputs'
dtypes).  `hrf` (K,) or (M, K) convolves the trajectory inside the kernel (its first `taps`
taps; zc is empty without it): the caller passes it only at inference, training convolves by
torch's FFT outside the op, but the autograd formula differentiates the fused form too (the
convolution's adjoint by FFT) so the op is correct whatever calls it.  The forward returns the
trajectory z the backward needs in any case (it is the result).  `need` says which of the
six gradients the backward computes (empty tensors for the others, and for an absent z0).
config: the PlrnnConfig as `config_key` spells it ("" = the host default); cache: a
`cache_key` ("" = DEFAULT_CACHE).
"""

from __future__ import annotations

import functools
import weakref
from typing import Optional

import torch
from torch import Tensor


_CONFIG_FIELDS = ("traj_block", "vector_width", "accumulators", "threads")
# caches passed by callers, by key (a KernelCache cannot be an op argument); weak values:
# the op holds no cache alive
_CACHES: weakref.WeakValueDictionary = weakref.WeakValueDictionary()


def config_key(config) -> str:
    """A PlrnnConfig as an op argument (plain string ops, so dynamo traces it)."""
    if config is None:
        return ""
    return ",".join(f"{n}={getattr(config, n)}" for n in _CONFIG_FIELDS)


@functools.lru_cache(maxsize=None)
def _config(key: str):
    from ssmc.codegen.tvm.plrnn import default_config
    from ssmc.codegen.tvm.plrnn_tir import PlrnnConfig

    if not key:
        return default_config()
    return PlrnnConfig(**{k: int(v) for k, v in (kv.split("=") for kv in key.split(","))})


def cache_key(cache) -> str:
    """A KernelCache as an op argument: "" for None / the default cache."""
    from ssmc.codegen.tvm.build import DEFAULT_CACHE

    if cache is None or cache is DEFAULT_CACHE:
        return ""
    key = str(id(cache))
    _CACHES[key] = cache
    return key


def resolve_cache(key: str):
    if not key:
        return None
    cache = _CACHES.get(key)
    if cache is None:
        raise RuntimeError(f"ssmc: kernel cache {key} no longer exists")
    return cache


# --------------------------------------------------------------------------- forward

@torch.library.custom_op("ssmc::plrnn", mutates_args=())
def plrnn_op(s: Tensor, A: Tensor, W: Tensor, h0: Tensor, C: Tensor, z0: Optional[Tensor],
             hrf: Optional[Tensor], taps: int, config: str, cache: str) -> tuple[Tensor, Tensor]:
    from ssmc.codegen.tvm.plrnn import _forward

    b, L, _ = s.shape
    M = A.shape[0]
    if b == 0 or L == 0:
        z = s.new_zeros(b, L, M, dtype=torch.float32)
        return z, (z.clone() if hrf is not None else s.new_empty(0, dtype=torch.float32))
    z, zc = _forward(s, A, W, h0, C, z0, hrf, taps, _config(config), resolve_cache(cache))
    if hrf is None:
        return z, s.new_empty(0, dtype=torch.float32)
    return z.contiguous(), zc  # z: a view into the padded trajectory; the fake says contiguous


@plrnn_op.register_fake
def _plrnn_fake(s, A, W, h0, C, z0, hrf, taps, config, cache):
    b, L, _ = s.shape
    z = s.new_empty(b, L, A.shape[0], dtype=torch.float32)
    return z, (torch.empty_like(z) if hrf is not None else s.new_empty(0, dtype=torch.float32))


# --------------------------------------------------------------------------- backward

@torch.library.custom_op("ssmc::plrnn_bwd", mutates_args=())
def plrnn_bwd_op(gz: Tensor, s: Tensor, A: Tensor, W: Tensor, C: Tensor, z0: Optional[Tensor],
                 z: Tensor, need: list[bool], config: str, cache: str
                 ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The adjoint recurrence (the TVM kernel, backward in t)

        G_t = gz_t + A G_{t+1} + [z_t > 0] W_o^T G_{t+1}

    then the parameter gradients as matmul reductions over batch and time:
        dA = sum G_t z_{t-1},  dW = offdiag(sum G_t relu(z_{t-1})^T),  dh0 = sum G_t,
        dC = sum G_t s_t^T,    ds_t = C^T G_t,   dz0 = A G_1 + [z0 > 0] W_o^T G_1."""
    from ssmc.codegen.tvm.plrnn import _backward_kernel
    from ssmc.semantics.recurrence import offdiag

    b, L, Mn = z.shape
    f32 = torch.float32
    Af, Wo = A.to(f32).contiguous(), offdiag(W.to(f32)).contiguous()
    if b == 0 or L == 0:
        G = s.new_zeros(b, L, Mn, dtype=f32)
    else:
        G = torch.empty(b, L, Mn, dtype=f32)
        _backward_kernel(Mn, _config(config), resolve_cache(cache))(
            gz.to(f32).contiguous(), z.contiguous(), Af, Wo, G)
    z_first = torch.zeros(b, 1, Mn, dtype=f32) if z0 is None else \
        z0.to(f32).expand(b, Mn)[:, None]
    zprev = torch.cat([z_first, z[:, :-1]], dim=1)
    Gf = G.reshape(-1, Mn)
    out = [s.new_empty(0, dtype=f32) for _ in range(6)]  # outputs may not alias each other
    if need[0]:
        out[0] = G @ C.to(f32)
    if need[1]:
        out[1] = (G * zprev).sum((0, 1))
    if need[2]:
        out[2] = offdiag(Gf.t() @ torch.relu(zprev).reshape(-1, Mn))
    if need[3]:
        out[3] = Gf.sum(0)
    if need[4]:
        out[4] = Gf.t() @ s.to(f32).reshape(-1, s.shape[-1])
    if need[5] and z0 is not None:
        g1 = G[:, 0] if L else G.new_zeros(b, Mn)
        dz0 = Af * g1 + (z_first[:, 0] > 0) * (g1 @ Wo)
        out[5] = dz0.sum(0) if z0.dim() == 1 else dz0
    return tuple(t.contiguous() for t in out)


@plrnn_bwd_op.register_fake
def _plrnn_bwd_fake(gz, s, A, W, C, z0, z, need, config, cache):
    b, L, Mn = z.shape
    shapes = [(b, L, s.shape[-1]), (Mn,), (Mn, Mn), (Mn,), tuple(C.shape),
              None if z0 is None else tuple(z0.shape)]
    return tuple(s.new_empty(sh if (w and sh is not None) else (0,), dtype=torch.float32)
                 for sh, w in zip(shapes, need))


# --------------------------------------------------------------------------- autograd

def _setup(ctx, inputs, output):
    s, A, W, h0, C, z0, hrf, taps, config, cache = inputs
    z, _ = output
    ctx.save_for_backward(s, A, W, C, z0, hrf, z)
    ctx.taps, ctx.config, ctx.cache = taps, config, cache
    ctx.dtypes = [None if t is None else t.dtype for t in (s, A, W, h0, C, z0, hrf)]


def _conv_adjoint(gzc, z, hrf, taps):
    """zc = H * z (causal, per unit, H = hrf's first `taps` taps): (dz, dhrf) by FFT
    products of length L + taps - 1 (no circular wrap; any length, so a symbolic L traces):
    dz[t] = sum_k H[k] gzc[t + k] (a correlation), dH[m, k] = sum over batch and t of
    gzc[t, m] z[t - k, m] (summed over the batch before the inverse)."""
    b, L, Mn = z.shape
    H = hrf.to(torch.float32).expand(Mn, hrf.shape[-1])[:, :taps]
    n = L + taps - 1
    Gf = torch.fft.rfft(gzc.transpose(1, 2), n=n)
    dz = torch.fft.irfft(Gf * torch.fft.rfft(H, n=n).conj(), n=n)[..., :L].transpose(1, 2)
    Zf = torch.fft.rfft(z.transpose(1, 2), n=n)
    dH = torch.fft.irfft((Gf * Zf.conj()).sum(0), n=n)[:, :taps]
    dH = torch.nn.functional.pad(dH, (0, hrf.shape[-1] - taps))  # taps past L: no effect
    return dz, (dH.sum(0) if hrf.dim() == 1 else dH)


def _backward(ctx, gz, gzc):
    s, A, W, C, z0, hrf, z = ctx.saved_tensors
    need = list(ctx.needs_input_grad[:7])
    dhrf = None
    if gz is None:
        gz = torch.zeros_like(z)
    if hrf is not None and gzc is not None:
        dz_conv, dhrf = _conv_adjoint(gzc.to(torch.float32), z, hrf, ctx.taps)
        gz = gz + dz_conv
    grads = torch.ops.ssmc.plrnn_bwd(gz, s, A, W, C, z0, z, need[:6], ctx.config, ctx.cache)
    grads = [g.to(dt) if w and dt is not None else None
             for g, w, dt in zip(grads, need, ctx.dtypes)]
    dhrf = dhrf.to(ctx.dtypes[6]) if need[6] and dhrf is not None else None
    return (*grads, dhrf, None, None, None)


plrnn_op.register_autograd(_backward, setup_context=_setup)


__all__ = ["plrnn_op", "plrnn_bwd_op", "config_key", "cache_key"]
