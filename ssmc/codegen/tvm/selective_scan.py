"""torch-facing Mamba-1 selective scan on the TVM CPU kernels.

`selective_scan` takes mamba-ssm's arguments (layout 'bdl': u/delta/z (b, d, L), B/C (d, N),
(b, N, L) or (b, g, N, L)) or channels-last ones (layout 'bld': u/delta/z (b, L, d), B/C (d, N),
(b, L, N) or (b, L, g, N), which is what compiled models pass, without transposes), checks
them, and runs the cached kernel for their signature.  Tensors reach the kernel through DLPack
without copies when they are already fp32 and contiguous in the kernel's layout; fp16/bf16
inputs are converted to fp32 here (the state is always fp32) and y is cast back.
"""

from __future__ import annotations

import functools

import torch

from ssmc.codegen.tvm import selective_scan_tir as tirb
from ssmc.codegen.tvm.build import DEFAULT_CACHE, KernelCache, compile_source
from ssmc.codegen.tvm.checks import FLOAT_DTYPES, check_tensor, describe, fail
from ssmc.codegen.tvm.config import Config, default_config, legalize
from ssmc.codegen.tvm.target import cuda_target

FAMILY = "selective_scan"
OP = "selective_scan"
LOG2E = 1.4426950408889634
# the modules a kernel of this family is built from (its cache key hashes them)
SOURCES = ("selective_scan_tir.py", "tirmath.py", "config.py", "build.py", "target.py")



def _fail(name: str, expected: str, got) -> ValueError:
    return fail(OP, name, expected, got)


def _shape(t) -> str:
    return describe(t)


def _check_tensor(name, t, shapes: list[tuple], expected_text: str, dtypes=FLOAT_DTYPES):
    check_tensor(OP, name, t, shapes, expected_text, dtypes)


def _bc_kind(name, t, b, d, N, L, layout) -> int:
    """Groups of B or C: 0 for time-invariant (d, N), else g of the input-dependent form."""
    seq_dims = "(b, N, L)" if layout == "bdl" else "(b, L, N)"
    grp_dims = "(b, g, N, L)" if layout == "bdl" else "(b, L, g, N)"
    text = (f"(d, N)=({d}, {N}), {seq_dims} with b={b} N={N} L={L}, or {grp_dims} with g "
            f"dividing d={d}")
    dtypes = FLOAT_DTYPES + (torch.complex64,)
    if not isinstance(t, torch.Tensor) or t.dim() not in (2, 3, 4):
        _check_tensor(name, t, [], text, dtypes)
    if t.dim() == 2:
        _check_tensor(name, t, [(d, N)], text, dtypes)
        return 0
    if t.dim() == 3:
        _check_tensor(name, t, [(b, N, L) if layout == "bdl" else (b, L, N)], text, dtypes)
        return 1
    g = t.shape[1] if layout == "bdl" else t.shape[2]
    ok = g >= 1 and d % g == 0
    want = (b, g, N, L) if layout == "bdl" else (b, L, g, N)
    _check_tensor(name, t, [want] if ok else [], text, dtypes)
    return int(g)


def _f32(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.float32).contiguous()


def _bc_for_kernel(t: torch.Tensor, groups: int, api_layout: str, kernel_layout: str,
                   part: str | None):
    """B or C in the kernel's layout: (N, d) for time-invariant, (b, L, g, N) for 'bld',
    (b, g, N, L) for 'bdl'.  part: 're' / 'im' of a complex tensor, or None."""
    if part is not None:
        t = t.real if part == "re" else t.imag if t.is_complex() else torch.zeros_like(t)
    if groups == 0:
        return _f32(t.t())
    if t.dim() == 3:  # shared: one group
        t = t.unsqueeze(1) if api_layout == "bdl" else t.unsqueeze(2)
    if api_layout != kernel_layout:
        t = t.permute(0, 3, 1, 2) if api_layout == "bdl" else t.permute(0, 2, 3, 1)
    return _f32(t)


def _seq_for_kernel(t, api_layout, kernel_layout):
    if api_layout != kernel_layout:
        t = t.transpose(1, 2)
    return _f32(t)


@functools.lru_cache(maxsize=None)
def _default_config(layout: str) -> Config:
    return legalize(default_config("llvm").replace(layout=layout), "llvm")


def get_kernel(sig: tirb.ScanSignature, config: Config, target=None,
               cache: KernelCache | None = None):
    """The compiled kernel for a signature and schedule (memory, disk cache, or a new build)."""
    cache = cache if cache is not None else DEFAULT_CACHE
    return cache.memoized(FAMILY, tirb.FUNC_NAME, sig, config, lambda: tirb.build_selective_scan(sig, config, "llvm"), target, SOURCES)


def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                   return_last_state=False, initial_state=None, layout="bdl", config=None,
                   conj_pair=True, conv_weight=None, conv_bias=None,
                   cache: KernelCache | None = None):
    """Mamba-1 selective scan (the meaning of ssmc.semantics.selective.selective_scan_ref).

    layout='bdl': u, delta, z (b, d, L); B, C (d, N), (b, N, L) or (b, g, N, L); y (b, d, L).
    layout='bld': u, delta, z (b, L, d); B, C (d, N), (b, L, N) or (b, L, g, N); y (b, L, d).
    A (d, N) real or complex64 (complex: y = 2 Re<C, h> + D u with conj_pair, as mamba-ssm);
    D, delta_bias (d,); initial_state (b, d, N) (complex64 for complex A).
    Returns y in u's dtype, and with return_last_state also the final state (b, d, N) in
    fp32 / complex64.  config: a Config (schedule knobs); None takes the target's default.

    conv_weight (d, 1, k) or (d, k), conv_bias (d,): fused Mamba prologue, the scan's input is
    silu(causal_conv1d(u)) computed inside the kernel (the kernel reads 'bld'; with
    layout='bdl' the inputs are transposed first).
    """
    if layout not in ("bdl", "bld"):
        raise ValueError(f"selective_scan: layout must be 'bdl' or 'bld'; got {layout!r}")
    if not isinstance(u, torch.Tensor) or u.dim() != 3:
        raise _fail("u", "a 3-D tensor (b, d, L)" if layout == "bdl" else
                    "a 3-D tensor (b, L, d)", _shape(u) if isinstance(u, torch.Tensor)
                    else type(u).__name__)
    if layout == "bdl":
        b, d, L = u.shape
    else:
        b, L, d = u.shape
    seq_text = f"(b, d, L)=({b}, {d}, {L})" if layout == "bdl" else \
        f"(b, L, d)=({b}, {L}, {d})"
    seq_shape = tuple(u.shape)
    _check_tensor("u", u, [seq_shape], seq_text)
    _check_tensor("delta", delta, [seq_shape], seq_text)
    if not isinstance(A, torch.Tensor) or A.dim() != 2 or A.shape[0] != d:
        raise _fail("A", f"a (d, N) tensor with d={d}",
                    _shape(A) if isinstance(A, torch.Tensor) else type(A).__name__)
    N = int(A.shape[1])
    _check_tensor("A", A, [(d, N)], f"(d, N)=({d}, {N})",
                  (torch.float32, torch.float16, torch.bfloat16, torch.complex64))
    cplx = A.is_complex()
    b_groups = _bc_kind("B", B, b, d, N, L, layout)
    c_groups = _bc_kind("C", C, b, d, N, L, layout)
    if not cplx and (B.is_complex() or C.is_complex()):
        raise _fail("B" if B.is_complex() else "C", "real when A is real", "complex64")
    if D is not None:
        _check_tensor("D", D, [(d,)], f"(d,)=({d},)")
    if z is not None:
        _check_tensor("z", z, [seq_shape], seq_text)
    if delta_bias is not None:
        _check_tensor("delta_bias", delta_bias, [(d,)], f"(d,)=({d},)")
    conv_k = 0
    if conv_weight is not None:
        conv_k = conv_weight.shape[-1] if isinstance(conv_weight, torch.Tensor) and \
            conv_weight.dim() in (2, 3) else 0
        _check_tensor("conv_weight", conv_weight, [(d, 1, conv_k), (d, conv_k)] if conv_k
                      else [], f"(d, 1, k) or (d, k) with d={d}")
    if conv_bias is not None:
        if conv_weight is None:
            raise _fail("conv_bias", "given together with conv_weight", "conv_weight=None")
        _check_tensor("conv_bias", conv_bias, [(d,)], f"(d,)=({d},)")
    state_dtype = torch.complex64 if cplx else torch.float32
    if initial_state is not None:
        _check_tensor("initial_state", initial_state, [(b, d, N)], f"(b, d, N)=({b}, {d}, {N})",
                      (state_dtype,) if cplx else FLOAT_DTYPES)

    sig = tirb.ScanSignature(
        d=d, N=N, b_groups=b_groups, c_groups=c_groups, complex_a=cplx,
        complex_b=cplx and B.is_complex(), complex_c=cplx and C.is_complex(),
        has_D=D is not None, has_z=z is not None, has_delta_bias=delta_bias is not None,
        delta_softplus=bool(delta_softplus), has_initial_state=initial_state is not None,
        return_last_state=bool(return_last_state), conj_pair=bool(conj_pair) if cplx else True,
        conv_width=conv_k, has_conv_bias=conv_bias is not None)
    # Default: the kernel reads the caller's layout.  Transposing in torch instead costs more
    # than the scan (measured: 2 MB (b, d, L) -> (b, L, d) copies ~2 ms each on 2 cores).
    config = _default_config(layout) if config is None else legalize(config, "llvm")
    if conv_k and config.layout != "bld":  # the fused conv reads rows of (b, L, d)
        config = config.replace(layout="bld")
    kl = config.layout

    if b == 0 or L == 0:  # nothing to scan; TVM would reject zero-sized buffers' strides
        y = u.new_zeros(u.shape)
        if not return_last_state:
            return y
        last = torch.zeros(b, d, N, dtype=state_dtype)
        if initial_state is not None:
            last = last + initial_state.to(state_dtype)
        return y, last

    args = {"u": _seq_for_kernel(u, layout, kl), "delta": _seq_for_kernel(delta, layout, kl)}
    if cplx:
        args["A2_re"] = _f32(A.real.t() * LOG2E)
        args["A_im"] = _f32(A.imag.t())
    else:
        args["A2"] = _f32(A.t().float() * LOG2E)
    for name, t, groups, is_c in (("B", B, b_groups, sig.complex_b),
                                  ("C", C, c_groups, sig.complex_c)):
        if is_c:
            args[f"{name}_re"] = _bc_for_kernel(t, groups, layout, kl, "re")
            args[f"{name}_im"] = _bc_for_kernel(t, groups, layout, kl, "im")
        else:
            args[name] = _bc_for_kernel(t.real if t.is_complex() else t, groups, layout, kl,
                                        None)
    if D is not None:
        args["D"] = _f32(D)
    if z is not None:
        args["z"] = _seq_for_kernel(z, layout, kl)
    if delta_bias is not None:
        args["delta_bias"] = _f32(delta_bias)
    if conv_k:
        args["conv_w"] = _f32(conv_weight.reshape(d, conv_k).t())
        if conv_bias is not None:
            args["conv_b"] = _f32(conv_bias)
    if initial_state is not None:
        h0 = initial_state.to(state_dtype).contiguous()
        args["h0"] = torch.view_as_real(h0) if cplx else h0
    out_shape = (b, L, d) if kl == "bld" else (b, d, L)
    args["out"] = torch.empty(out_shape, dtype=torch.float32)
    last = None
    if return_last_state:
        last = torch.empty(b, d, N, dtype=state_dtype)
        args["h_last"] = torch.view_as_real(last) if cplx else last

    kernel = get_kernel(sig, config, cache=cache)
    kernel(*[args[name] for name in tirb.arg_names(sig)])

    y = args["out"]
    if kl != layout:
        y = y.transpose(1, 2).contiguous()
    if u.dtype != torch.float32:
        y = y.to(u.dtype)
    return (y, last) if return_last_state else y


def selective_scan_cuda_source(sig: tirb.ScanSignature, config: Config | None = None,
                               arch: str = "sm_90") -> str:
    """CUDA C of the selective scan for `sig` from the same builder (no GPU needed)."""
    config = config or default_config("cuda")
    prim = tirb.build_selective_scan(sig, config.replace(layout="bld"), "cuda")
    return compile_source(prim, cuda_target(arch), tirb.FUNC_NAME)


__all__ = ["selective_scan", "selective_scan_cuda_source", "get_kernel", "Config"]
