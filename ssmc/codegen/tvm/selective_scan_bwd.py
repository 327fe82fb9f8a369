"""torch-facing backward of the real-A Mamba-1 selective scan on a TVM CPU kernel.

`selective_scan_backward` is what ssmc.runtime.library registers for
("selective_scan", "cpu"): it takes the op's arguments and runs the library's portable
backward (`selective_scan_backward_torch`: layouts, dtypes, the effective step's softplus /
bias derivatives) with this module's `scan_backward` in place of the torch engine's
`ssmc.runtime.backward.scan_backward`, so everything around the reverse scan is shared.

`scan_backward` takes the engine's canonical problem (channels last, fp32) and returns the
same dict; the kernel (selective_scan_bwd_tir) does the reverse scan with the D skip and the z
gate, torch only sums the kernel's per-task partials (gA, gD over the batch; grouped gB, gC
over a group's channel blocks).  A (d, 1) (one A per channel) and a keep mask (state resets)
are covered too, so the torch engine's SSD problem runs here as well; ssmc.codegen.tvm.ssd_bwd
is the SSD entry point proper (the kernel's SSD mode, dt and A per head, through `run_kernel`).
Complex A, float64 and anything else the kernel does not cover return NotImplemented (the
torch engine runs).
"""

from __future__ import annotations

import functools

import torch

from ssmc.codegen.tvm import selective_scan_bwd_tir as tirb
from ssmc.codegen.tvm.build import DEFAULT_CACHE, KernelCache
from ssmc.codegen.tvm.config import Config, default_config, legalize
from ssmc.runtime import backward as bw

FAMILY = "selective_scan_bwd"
LOG2E = 1.4426950408889634
# the modules a kernel of this family is built from (its cache key hashes them)
SOURCES = ("selective_scan_bwd_tir.py", "selective_scan_tir.py", "tirmath.py", "config.py",
           "build.py", "target.py")
_F32 = torch.float32
_KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)



@functools.lru_cache(maxsize=None)
def default_bwd_config() -> Config:
    return legalize(default_config("llvm"), "llvm")


def get_kernel(sig: tirb.BwdSignature, config: Config, target=None,
               cache: KernelCache | None = None):
    """The compiled backward kernel (memory, disk cache, or a new build)."""
    cache = cache if cache is not None else DEFAULT_CACHE
    return cache.memoized(FAMILY, tirb.FUNC_NAME, sig, config, lambda: tirb.build_selective_scan_bwd(sig, config), target, SOURCES)


def handles(p: bw.ScanProblem) -> bool:
    """What the kernel covers: real A (d, N) or one per channel (d, 1), real B/C, fp32
    compute (state resets `keep` included)."""
    b, L, d, N = p.shape
    real = not (p.A.is_complex() or p.B.is_complex() or p.C.is_complex())
    return (real and p.u.dtype == _F32 and p.u.device.type == "cpu"
            and tuple(p.A.shape) in ((d, N), (d, 1)) and b > 0 and L > 0 and d > 0 and N > 0)


def _groups(M: torch.Tensor) -> int:
    return 0 if M.dim() == 2 else int(M.shape[2])


def _channels_major(u: torch.Tensor) -> bool:
    """Whether the problem's (b, L, d) sequences are views of (b, d, L) tensors (the library's
    layout 'bdl', mamba-ssm's): the kernel then reads and writes that layout itself."""
    return not u.is_contiguous() and u.transpose(1, 2).is_contiguous()


def _seq_arg(t: torch.Tensor, bdl: bool) -> torch.Tensor:
    """(b, L, d) -> the kernel's layout, fp32 (no copy when it already is)."""
    return (t.transpose(1, 2) if bdl else t).to(_F32).contiguous()


def _bc_arg(M: torch.Tensor, bdl: bool) -> torch.Tensor:
    """B or C as the kernel reads it: (N, d) time-invariant, (b, L, g, N) grouped, or
    (b, g, N, L) with layout 'bdl'."""
    if M.dim() == 2:
        M = M.t()
    elif bdl:
        M = M.permute(0, 2, 3, 1)
    return M.to(_F32).contiguous()


def _reduce_partial(part: torch.Tensor, groups: int, b: int, L: int) -> torch.Tensor:
    """The kernel's B/C partials -> the gradient: (b, N, d) summed over batch -> (d, N), or
    (b, L, blocks, N) summed over each group's blocks -> (b, L, g, N)."""
    if groups == 0:
        return part.sum(0).t()
    nb, N = part.shape[2], part.shape[3]
    return part.view(b, L, groups, nb // groups, N).sum(3)


def run_kernel(sig: tirb.BwdSignature, *, u, delta, gout, A2, B, C, D=None, z=None, keep=None,
               h0=None, glast=None, checkpoints=None, chunk: int, config: Config | None = None,
               cache: KernelCache | None = None) -> dict:
    """One run of the backward kernel on operands already in its layout (fp32, contiguous;
    sequences (b, L, d) or with sig.layout 'bdl' (b, d, L); delta (b, L, heads) and A2 (heads,)
    in SSD mode, else delta like u and A2 = A^T log2(e) (N, d)).  `checkpoints` (b, nc, d, N)
    with nc = ceil(L / chunk), else None (the kernel recomputes them).  Returns the kernel's
    output tensors by argument name (partials: see `scan_backward` for their reduction)."""
    bdl = sig.layout == "bdl"
    if bdl:
        b, d, L = u.shape
    else:
        b, L, d = u.shape
    N = sig.N
    chunk = max(1, int(chunk))
    nc = (L + chunk - 1) // chunk
    config = default_bwd_config() if config is None else legalize(config, "llvm")
    nb = tirb.blocks(sig, config).count
    recompute = checkpoints is None or checkpoints.shape[1] != nc
    zeros_state = u.new_zeros(b, d, N)

    def partial(groups):
        return u.new_empty((b, N, d) if groups == 0 else (b, L, nb, N))

    seq = (b, d, L) if bdl else (b, L, d)
    rows = min(chunk, L) + 1
    args = {
        "u": u, "delta": delta, "gout": gout, "A2": A2, "B": B, "C": C, "D": D, "z": z,
        "keep": keep, "h0": zeros_state if h0 is None else h0,
        "glast": zeros_state if glast is None else glast,
        "ckpt": u.new_empty(b, nc, d, N) if recompute else checkpoints,
        # one chunk's states; rows beyond L are never used (K = rows - 1 only matters when
        # there are several chunks, and then chunk < L)
        "hs": u.new_empty(b, rows, N, d),
        "tile": u.new_empty(b, nb, rows, len(tirb.TILE_SLOTS), tirb.blocks(sig, config).cb)
        if bdl else None,
        "recompute": int(recompute),
        "gu": u.new_empty(seq), "gdt": u.new_empty(seq),
        "gA": u.new_empty((b, d) if sig.heads else (b, N, d)),
        "gB": partial(sig.b_groups), "gC": partial(sig.c_groups),
        "gh0": u.new_empty(b, d, N), "gD": u.new_empty(b, d), "gz": u.new_empty(seq),
    }
    get_kernel(sig, config, cache=cache)(*[args[nm] for nm in tirb.arg_names(sig)])
    return args


def scan_backward(p: bw.ScanProblem, gout: torch.Tensor, glast: torch.Tensor | None,
                  checkpoints: torch.Tensor | None, chunk: int, config: Config | None = None,
                  cache: KernelCache | None = None):
    """ssmc.runtime.backward.scan_backward on the TVM kernel (same arguments and dict), or
    NotImplemented for a problem the kernel does not cover.  A (d, 1) (one A per channel,
    the torch engine's SSD problem) runs as (d, N) with equal columns."""
    if not handles(p):
        return NotImplemented
    b, L, d, N = p.shape
    bdl = _channels_major(p.u)
    sig = tirb.BwdSignature(d=d, N=N, b_groups=_groups(p.B), c_groups=_groups(p.C),
                            has_D=p.D is not None, has_z=p.z is not None,
                            layout="bdl" if bdl else "bld", has_keep=p.keep is not None)

    def f32(t):
        return None if t is None else t.to(_F32).contiguous()

    args = run_kernel(
        sig, u=_seq_arg(p.u, bdl), delta=_seq_arg(p.dt, bdl), gout=_seq_arg(gout, bdl),
        A2=f32(p.A.expand(d, N).t() * LOG2E), B=_bc_arg(p.B, bdl), C=_bc_arg(p.C, bdl),
        D=f32(p.D), z=None if p.z is None else _seq_arg(p.z, bdl), keep=f32(p.keep),
        h0=f32(p.h0), glast=f32(glast), checkpoints=f32(checkpoints), chunk=chunk,
        config=config, cache=cache)

    def out(name):  # (b, L, d) views of 'bdl' results: the library transposes them back free
        return args[name].transpose(1, 2) if bdl else args[name]

    gA = args["gA"].sum(0).t()
    if p.A.shape[-1] == 1:
        gA = gA.sum(-1, keepdim=True)
    return {"u": out("gu"), "dt": out("gdt"), "A": gA,
            "B": _reduce_partial(args["gB"], sig.b_groups, b, L),
            "C": _reduce_partial(args["gC"], sig.c_groups, b, L),
            "D": args["gD"].sum(0) if sig.has_D else None, "z": out("gz") if sig.has_z else None,
            "h0": args["gh0"] if p.h0 is not None else None}


def _applies(u, delta, A, B, C, D, z, delta_bias, initial_state, **_) -> bool:
    """Before building the problem: real A/B/C on the CPU, no 64-bit input."""
    ts = (u, delta, A, B, C, D, z, delta_bias, initial_state)
    if A.is_complex() or B.is_complex() or C.is_complex() or u.device.type != "cpu":
        return False
    return all(t is None or t.dtype in _KERNEL_DTYPES for t in ts) and u.numel() > 0


def selective_scan_backward(**kw):
    """The ("selective_scan", "cpu") backward: the op's keyword arguments -> its 9-tuple, or
    NotImplemented (the library then runs the torch engine)."""
    if not _applies(**kw):
        return NotImplemented
    from ssmc.runtime.library import selective_scan_backward_torch

    return selective_scan_backward_torch(**kw, scan_backward=_engine)


def _engine(p, gout, glast, checkpoints, chunk):
    """scan_backward, falling back to the torch engine where it declines (looked up at call
    time so tests can spy on `scan_backward`)."""
    out = scan_backward(p, gout, glast, checkpoints, chunk)
    if out is NotImplemented:
        return bw.scan_backward(p, gout, glast, checkpoints, chunk)
    return out


__all__ = ["scan_backward", "selective_scan_backward", "get_kernel", "handles", "run_kernel"]
