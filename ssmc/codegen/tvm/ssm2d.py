"""torch-facing 2-D SSM (Chimera) on the TVM CPU kernels of ssm2d_tir.

`ssm2d` takes the oracle's arguments (ssmc.semantics.ssm2d.ssm2d_ref): x (b, T, V, d);
A1..A4 (d, N); B1, B2, C1, C2 (d, N), (b, T, V, N) or (b, T, V, d, N); dt_t, dt_v (d,) or
(b, T, V, d) (the steps themselves, positive); D (d,) or None; bidirectional.  It checks them
(ValueError naming the argument), discretises what does not depend on the cell in torch (E and
G of a per-channel step), and runs the cached kernel for the operands' forms.  fp16/bf16
inputs are computed in fp32 and the result is cast back.  fp32 x and per-cell operands reach
the kernel without copies: x contiguous, B/C (b, T, V, N) and dt (b, T, V, d) with any strides
but a unit last one (the executor passes views into the x_proj / dt_proj outputs).

Differentiable and traceable: when an input requires grad (and grad mode is on), or under
torch.compile, the kernel runs as the ssmc::ssm2d op (ssmc.runtime.ssm2d_op), whose backward
is the adjoint kernel (ssm2d_bwd_tir); the torch preparation of the kernel's arguments below
is differentiable, so autograd carries the kernel's gradients back to the caller's tensors.
fp64 is not supported (the kernels are fp32): the reference (semantics.ssm2d) serves fp64 and
gradcheck.
"""

from __future__ import annotations

import functools

import torch

from ssmc.codegen.tvm import ssm2d_tir as tirb
from ssmc.codegen.tvm.build import DEFAULT_CACHE, KernelCache
from ssmc.codegen.tvm.checks import check_tensor, describe

FAMILY = "ssm2d"

# the modules a kernel is built from (its cache key hashes only these)
SOURCES = ("ssm2d_tir.py", "tirmath.py", "build.py", "target.py")


def _check(name: str, t, shapes: list, text: str) -> torch.Tensor:
    return check_tensor("ssm2d", name, t, shapes, text)


def _f32(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.float32).contiguous()


def _f32_rows(t: torch.Tensor) -> torch.Tensor:
    """fp32 with a unit last stride, other strides as they are (no copy for such views)."""
    t = t.to(torch.float32)
    return t if t.stride(-1) == 1 else t.contiguous()


@functools.lru_cache(maxsize=None)
def default_config() -> tirb.Ssm2dConfig:
    from ssmc.codegen.tvm.target import host_vector_lanes_f32

    lanes = host_vector_lanes_f32()
    return tirb.Ssm2dConfig(channel_block=lanes, vector_width=lanes)


def get_kernel(sig: tirb.Ssm2dSignature, config: tirb.Ssm2dConfig, target=None,
               cache: KernelCache | None = None):
    """The compiled kernel (memory, the disk cache, or a new build)."""
    cache = cache if cache is not None else DEFAULT_CACHE
    return cache.memoized(FAMILY, tirb.FUNC_NAME, sig, config,
                          lambda: tirb.build_ssm2d(sig, config), target, SOURCES)


def _bc_form(name, t, b, T, V, d, N) -> int:
    text = f"(d, N)=({d}, {N}), (b, T, V, N)=({b}, {T}, {V}, {N}) or (b, T, V, d, N)"
    _check(name, t, [(d, N), (b, T, V, N), (b, T, V, d, N)], text)
    # the rank tells the form ((d, N) and (b, T, V, N) cannot coincide)
    return {2: tirb.BC_PARAM, 4: tirb.BC_SHARED, 5: tirb.BC_FULL}[t.dim()]


def _dt_cell(name, t, b, T, V, d) -> bool:
    _check(name, t, [(d,), (b, T, V, d)], f"(d,)=({d},) or (b, T, V, d)=({b}, {T}, {V}, {d})")
    return t.dim() == 4


def kernel_args(x, A1, A2, A3, A4, B1, B2, C1, C2, dt_t, dt_v, D=None,
                bidirectional=False, dt_softplus: bool = False):
    """The forward kernel's signature and inputs (by name, fp32, in its layouts) for ssm2d's
    arguments, checked (ValueError naming the argument) and prepared with differentiable
    torch ops; None for an empty grid."""
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        raise ValueError(f"ssm2d: x must be a 4-D tensor (b, T, V, d); got {describe(x)}")
    b, T, V, d = (int(s) for s in x.shape)
    _check("x", x, [x.shape], "(b, T, V, d)")
    if not isinstance(A1, torch.Tensor) or A1.dim() != 2 or A1.shape[0] != d:
        raise ValueError(f"ssm2d: A1 must be a (d, N) tensor with d={d}; got {describe(A1)}")
    N = int(A1.shape[1])
    for name, A in (("A1", A1), ("A2", A2), ("A3", A3), ("A4", A4)):
        _check(name, A, [(d, N)], f"(d, N)=({d}, {N})")
    for name, A in (("A1", A1), ("A4", A4)):
        # a data-dependent check: not while torch.compile traces (it would break the graph)
        if not torch.compiler.is_compiling() and bool((A == 0).any()):
            raise ValueError(f"ssm2d: {name} must be nonzero (the diagonal of a stable "
                             "transition is negative); it has zeros")
    bc = tuple(_bc_form(nm, t, b, T, V, d, N) for nm, t in zip(tirb.BC_NAMES, (B1, B2, C1, C2)))
    dt_cell = (_dt_cell("dt_t", dt_t, b, T, V, d), _dt_cell("dt_v", dt_v, b, T, V, d))
    if D is not None:
        _check("D", D, [(d,)], f"(d,)=({d},)")
    if not isinstance(bidirectional, bool):
        raise ValueError(f"ssm2d: bidirectional must be a bool; got {bidirectional!r}")
    if not isinstance(dt_softplus, bool):
        raise ValueError(f"ssm2d: dt_softplus must be a bool; got {dt_softplus!r}")
    if b == 0 or T == 0 or V == 0:
        return None

    if dt_softplus and not all(dt_cell):  # per-channel steps: once here
        dt_t = dt_t if dt_cell[0] else torch.nn.functional.softplus(dt_t.float())
        dt_v = dt_v if dt_cell[1] else torch.nn.functional.softplus(dt_v.float())
    sig = tirb.Ssm2dSignature(d=d, N=N, bc=bc, dt_cell=dt_cell, has_D=D is not None,
                              bidirectional=bidirectional,
                              dt_softplus=dt_softplus and any(dt_cell))
    args = {"x": _f32(x)}
    for name, t, form in zip(tirb.BC_NAMES, (B1, B2, C1, C2), bc):
        args[name] = t.float().t() if form == tirb.BC_PARAM else \
            _f32_rows(t) if form == tirb.BC_SHARED else _f32(t)
    for k, (A, Ac, dt) in enumerate(((A1, A2, dt_t), (A4, A3, dt_v))):
        Af, Acf = A.float(), Ac.float()
        if dt_cell[k]:
            names = ("dt_t", "A1", "A1inv", "A2") if k == 0 else ("dt_v", "A4", "A4inv", "A3")
            args[names[0]] = _f32_rows(dt)
            for nm, val in zip(names[1:], (Af.t(), (1.0 / Af).t(), Acf.t())):
                args[nm] = _f32(val)
        else:  # one step per channel: the oracle's zoh_axis once here, G folded in
            dA = dt.float()[:, None] * Af
            G = torch.expm1(dA) / Af
            E_, G_, AG = ("E1", "G1", "A2G") if k == 0 else ("E4", "G4", "A3G")
            args[E_], args[G_], args[AG] = _f32(torch.exp(dA).t()), _f32(G.t()), _f32((G * Acf).t())
            if bc[k] == tirb.BC_PARAM:  # B (d, N): G * B once
                Bn = tirb.BC_NAMES[k]
                args[Bn] = args[Bn] * G.t()
    for name, form in zip(tirb.BC_NAMES, bc):
        if form != tirb.BC_SHARED:
            args[name] = _f32(args[name])
    if D is not None:
        args["D"] = _f32(D)
    return sig, args


def ssm2d(x, A1, A2, A3, A4, B1, B2, C1, C2, dt_t, dt_v, D=None, bidirectional=False,
          dt_softplus: bool = False, config: tirb.Ssm2dConfig | None = None,
          cache: KernelCache | None = None, bwd_chunk: int | None = None):
    """2-D SSM on the CPU (same arguments and result as ssmc.semantics.ssm2d.ssm2d_ref).

    dt_softplus: dt_t / dt_v are pre-activation and the steps are softplus of them (Chimera's
    dt_proj output; applied in the kernel, once per cell and channel).  config: an
    Ssm2dConfig (order 'wavefront' or 'rows', channel block, vector width); None takes the
    host's default (the backward kernel uses the same).  bwd_chunk: rows per recompute chunk
    of the backward (None: ssm2d_bwd.chunk_rows).  Returns y (b, T, V, d) in x's dtype."""
    if config is not None and not isinstance(config, tirb.Ssm2dConfig):
        raise ValueError(f"ssm2d: config must be an Ssm2dConfig; got {type(config).__name__}")
    prepared = kernel_args(x, A1, A2, A3, A4, B1, B2, C1, C2, dt_t, dt_v, D, bidirectional,
                           dt_softplus)
    if prepared is None:
        return x.new_zeros(x.shape)
    sig, args = prepared
    if torch.compiler.is_compiling() or (torch.is_grad_enabled() and any(
            isinstance(t, torch.Tensor) and t.requires_grad for t in args.values())):
        from ssmc.codegen.tvm.ssm2d_bwd_tir import input_names
        from ssmc.runtime import ssm2d_op as op

        # the ssmc::ssm2d op: differentiable (the adjoint kernel) and traceable (config None:
        # "", the op takes the host default: no host queries while dynamo traces)
        y = torch.ops.ssmc.ssm2d([args[n] for n in input_names(sig)], op.sig_key(sig),
                                 op.config_key(config), int(bwd_chunk or 0),
                                 op.cache_key(cache))
    else:
        y = run_forward(sig, config or default_config(), args, cache=cache)
    return y if x.dtype == torch.float32 else y.to(x.dtype)


def run_forward(sig: tirb.Ssm2dSignature, config: tirb.Ssm2dConfig, args: dict,
                cache: KernelCache | None = None) -> torch.Tensor:
    """The forward kernel on its inputs `args` (by name, already in its layouts): y fp32."""
    b, T, V, d = args["x"].shape
    kargs = dict(args)
    kargs["out"] = torch.empty(b, T, V, d, dtype=torch.float32)
    kargs["ws"] = torch.empty(tirb.workspace_shape(sig, config, b, V), dtype=torch.float32)
    get_kernel(sig, config, cache=cache)(*[kargs[n] for n in tirb.arg_names(sig)])
    return kargs["out"]


__all__ = ["ssm2d", "kernel_args", "get_kernel", "default_config", "run_forward"]
