"""torch-facing PLRNN (+ HRF convolution) on the TVM CPU kernel of plrnn_tir.

`plrnn(s, A, W, h0, C, z0=None)` has the oracle's arguments and result
(ssmc.semantics.recurrence.plrnn_ref): s (b, L, K_in), A (M,), W (M, M) (its diagonal is
ignored), h0 (M,), C (M, K_in), z0 (b, M), (M,) or None -> z (b, L, M).  The input drive
C s_t + h0 is computed in the kernel too (K_in multiply-adds per step: no torch op, whose
thread pool costs more than the whole recurrence at small sizes).

With `hrf` ((K,) shared or (M, K) per latent unit) it also returns the causal convolution
zc = hrf * z (ssmc.semantics.recurrence.causal_conv_fft / _direct), computed where it is
cheapest: inside the recurrence kernel (`conv="fused"`, K multiply-adds per step and unit while
the trajectory is still in cache) or by torch's FFT after it (`conv="fft"`); "auto" fuses up
to FUSE_MAX_TAPS taps.  fp16/bf16 inputs are computed in fp32 and the results cast back.

Differentiable and traceable: when an input requires grad, or under torch.compile, z comes
from the ssmc::plrnn op (ssmc.runtime.plrnn_op), whose backward is the adjoint recurrence (a
second TVM kernel, backward in t) plus matmul reductions for the parameter gradients; with
gradients the convolution runs by torch's FFT after it (autograd differentiates it).
"""

from __future__ import annotations

import functools
import os

import torch

from ssmc.codegen.tvm import plrnn_tir as tirb
from ssmc.codegen.tvm.build import CACHE_ENV, DEFAULT_CACHE, KernelCache
from ssmc.codegen.tvm.checks import check_tensor, describe
from ssmc.codegen.tvm.target import host_target
from ssmc.semantics.recurrence import causal_conv_fft, offdiag

FAMILY = "plrnn"
CONV_METHODS = ("auto", "fused", "fft")
# Fused direct convolution: K multiply-adds per output, while z is in cache; torch's FFT: a
# pass over memory, two transposes and its own overheads.  Measured (b 64, L 1024, M 16, one
# thread, CPU time): fused 1.6 / 2.0 / 3.1 / 7.5 / 15.5 ms at 8 / 32 / 64 / 128 / 256 taps,
# FFT 10.7 / 12.1 / 13.4 ms at 64 / 128 / 256 taps (and 31 ms at 8-32 taps in a noisier run):
# break-even near 200 taps.  SPM's HRF has 17 taps at TR 2 s, 33 at TR 1 s.
FUSE_MAX_TAPS = 128

# the modules a kernel is built from (its cache key hashes only these)
SOURCES = ("plrnn_tir.py", "tirmath.py", "build.py", "target.py")
_kernels: dict = {}


def _check(name: str, t, shapes: list, text: str) -> torch.Tensor:
    return check_tensor("plrnn", name, t, shapes, text)


@functools.lru_cache(maxsize=None)
def default_config() -> tirb.PlrnnConfig:
    from ssmc.codegen.tvm.target import host_vector_lanes_f32

    return tirb.PlrnnConfig(vector_width=host_vector_lanes_f32())


def get_kernel(sig: tirb.PlrnnSignature, config: tirb.PlrnnConfig, target=None,
               cache: KernelCache | None = None):
    cache = cache if cache is not None else DEFAULT_CACHE
    return cache.memoized(FAMILY, tirb.FUNC_NAME, sig, config,
                          lambda: tirb.build_plrnn(sig, config), target, SOURCES)


def plrnn(s, A, W, h0, C, z0=None, *, hrf=None, conv: str = "auto",
          config: tirb.PlrnnConfig | None = None, cache: KernelCache | None = None):
    """PLRNN latent trajectory z (b, L, M) in s's dtype; with `hrf`, (z, hrf * z)."""
    if not isinstance(s, torch.Tensor) or s.dim() != 3:
        raise ValueError(f"plrnn: s must be a 3-D tensor (b, L, K_in); got {describe(s)}")
    b, L, k_in = (int(x) for x in s.shape)
    _check("s", s, [s.shape], "(b, L, K_in)")
    if not isinstance(A, torch.Tensor) or A.dim() != 1:
        raise ValueError(f"plrnn: A must be a 1-D tensor (M,); got {describe(A)}")
    Mn = int(A.shape[0])
    _check("A", A, [(Mn,)], f"(M,)=({Mn},)")
    _check("W", W, [(Mn, Mn)], f"(M, M)=({Mn}, {Mn})")
    _check("h0", h0, [(Mn,)], f"(M,)=({Mn},)")
    _check("C", C, [(Mn, k_in)], f"(M, K_in)=({Mn}, {k_in})")
    if z0 is not None:
        _check("z0", z0, [(b, Mn), (Mn,)], f"(b, M)=({b}, {Mn}) or (M,)")
    if hrf is not None:
        if not isinstance(hrf, torch.Tensor) or hrf.dim() not in (1, 2) or hrf.shape[-1] < 1:
            raise ValueError(f"plrnn: hrf must be (K,) or (M, K) with K >= 1; got {describe(hrf)}")
        _check("hrf", hrf, [tuple(hrf.shape[-1:]), (Mn, hrf.shape[-1])],
               f"(K,) or (M, K) with M={Mn}")
    if conv not in CONV_METHODS:
        raise ValueError(f"plrnn: conv must be one of {CONV_METHODS}; got {conv!r}")
    if config is not None and not isinstance(config, tirb.PlrnnConfig):
        raise ValueError(f"plrnn: config must be a PlrnnConfig; got {type(config).__name__}")

    taps = 0 if hrf is None else min(int(hrf.shape[-1]), max(L, 1))
    fused = hrf is not None and (conv == "fused" or (conv == "auto" and taps <= FUSE_MAX_TAPS))
    if b == 0 or L == 0:
        z = s.new_zeros(b, L, Mn)
        return z if hrf is None else (z, z.clone())
    grad = torch.is_grad_enabled() and any(isinstance(t, torch.Tensor) and t.requires_grad
                                           for t in (s, A, W, h0, C, z0, hrf))
    if grad or torch.compiler.is_compiling():
        # the ssmc::plrnn op: differentiable (the adjoint kernel) and traceable.  With
        # gradients the convolution runs by torch's FFT outside it (autograd differentiates
        # it); at inference (traced) the kernel fuses it as below.
        from ssmc.runtime.plrnn_op import cache_key, config_key

        fuse = fused and not grad
        z, zc = torch.ops.ssmc.plrnn(s, A, W, h0, C, z0, hrf if fuse else None, taps,
                                     config_key(config), cache_key(cache))
        if hrf is None:
            return z.to(s.dtype)
        if not fuse:
            zc = causal_conv_fft(z, hrf.to(z.dtype))
        return z.to(s.dtype), zc.to(s.dtype)
    z, zc = _forward(s, A, W, h0, C, z0, hrf if fused else None, taps,
                     config or default_config(), cache)
    if hrf is None:
        return z if s.dtype == torch.float32 else z.to(s.dtype)
    if not fused:
        zc = causal_conv_fft(z, hrf.to(torch.float32))
    if s.dtype != torch.float32:
        z, zc = z.to(s.dtype), zc.to(s.dtype)
    return z, zc


def _forward(s, A, W, h0, C, z0, hrf, taps, config, cache):
    """The forward kernel: z (b, L, M) fp32, and zc when `hrf` is given (fused)."""
    b, L, k_in = s.shape
    Mn = A.shape[0]
    f32 = torch.float32
    args = {"s": s.to(f32).contiguous(), "CT": C.to(f32).t().contiguous(),
            "h0": h0.to(f32).contiguous(), "A": A.to(f32).contiguous(),
            "WT": offdiag(W.to(f32)).t().contiguous()}
    fused = hrf is not None
    sig = tirb.PlrnnSignature(M=Mn, K_in=k_in, K=taps if fused else 0, has_z0=z0 is not None)
    if z0 is not None:
        args["z0"] = z0.to(f32).expand(b, Mn).contiguous()
    if fused:
        H = hrf.to(f32).expand(Mn, hrf.shape[-1])[:, :taps]
        args["H"] = H.t().contiguous()
        args["zp"] = torch.empty(b, L + taps - 1, Mn, dtype=f32)
        args["zc"] = torch.empty(b, L, Mn, dtype=f32)
    else:
        args["z"] = torch.empty(b, L, Mn, dtype=f32)
    get_kernel(sig, config, cache=cache)(*[args[n] for n in tirb.arg_names(sig)])
    if fused:
        return args["zp"][:, taps - 1:], args["zc"]
    return args["z"], None


def _backward_kernel(M: int, config, cache):
    target = host_target()
    cache = cache if cache is not None else DEFAULT_CACHE
    sig = tirb.PlrnnSignature(M=M, K_in=1)
    key = ("backward", M, config, id(target), id(cache), cache.root, os.environ.get(CACHE_ENV))
    kernel = _kernels.get(key)
    if kernel is None:
        kernel = cache.get(FAMILY + "_backward", tirb.BACKWARD_NAME, {"M": M}, "float32",
                           target, config.as_dict(),
                           lambda: tirb.build_plrnn_backward(sig, config), sources=SOURCES)
        _kernels[key] = kernel
    return kernel


__all__ = ["plrnn", "get_kernel", "default_config", "FUSE_MAX_TAPS"]
