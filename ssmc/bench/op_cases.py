"""The op subjects: Mamba-1's selective scan and Mamba-2's SSD, each with ssmc's public op, the
eager reference, the associative/chunked formulation (eager and under torch.compile) and peers.

Inputs follow the shapes DESIGN.md measured (batch 2, d_inner 256, N 16, fp32 for the selective
scan; Mamba-2's head layout with the same d_inner for SSD); --dim NAME=VALUE overrides a size.
"""

from __future__ import annotations

import warnings

from ssmc import costmodel as cm
from ssmc.bench import peers
from ssmc.bench.roofline import roofline
from ssmc.bench.subject import Impl, device_for, sync_for, timed_pass, torch_dtype
from ssmc.errors import SsmcError, did_you_mean


def kernel_label(family: str, backend: str) -> tuple:
    """(what ssmc's op runs for this family on this backend, whether that is a compiled kernel).
    Without a kernel the ssmc:: ops run their vectorised torch engine (ssmc.runtime.library)."""
    from ssmc.runtime import dispatch

    short = family.split("/")[-1]
    alg = dispatch.DEFAULT_ALGORITHM.get((family, backend))
    if dispatch.available(family, alg, backend):
        return f"{backend}:{short}/{alg}", True
    return f"torch engine (no {backend} kernel for {short})", False


def backward_label(op: str, device: str) -> str:
    """What runs ssmc's backward: a registered kernel, else the torch reverse scan."""
    from ssmc.runtime import library

    fn = getattr(library, "_BACKWARD", {}).get((op, device))
    if fn is not None:
        return f"backward: {getattr(fn, '__module__', '')}.{getattr(fn, '__name__', fn)}"
    return "backward: the torch reverse scan of ssmc::" + op + "_bwd (ssmc.runtime.backward)"


class _OpSubject:
    name = ""
    family = ""
    DIMS: dict = {}

    def __init__(self, recipe):
        import torch

        from ssmc.runtime.compiled import backend_of
        from ssmc.targets import load_target

        unknown = [k for k in recipe.dims if k not in self.DIMS]
        if unknown:
            hint = did_you_mean(unknown[0], self.DIMS)
            raise SsmcError(f"--dim {unknown[0]}: {self.name} has sizes {', '.join(self.DIMS)}"
                            + (f" (did you mean '{hint}'?)" if hint else ""))
        self.recipe = recipe
        self.dims = {**self.DIMS, **recipe.dims}
        self.target = load_target(recipe.target)
        self.device = device_for(self.target)
        self.sync = sync_for(self.device)
        self.dtype = torch_dtype(recipe.dtype)
        self.backend = backend_of(self.target)
        self.kernel, self.ssmc_on_kernel = kernel_label(self.family, self.backend)
        self._torch = torch

    def describe(self) -> str:
        sizes = " ".join(f"{k}={v}" for k, v in self.dims.items())
        return f"{self.name} batch={self.recipe.batch} {sizes} {self.recipe.dtype}"

    def _gen(self, L: int):
        return self._torch.Generator().manual_seed(self.recipe.seed + L)

    def _leaves(self, tensors: dict) -> list:
        """The float tensors gradients flow to, made leaves requiring grad when timing backward."""
        if not self.recipe.backward:
            return []
        out = []
        for k, t in tensors.items():
            if t.is_floating_point():
                t.requires_grad_(True)
                out.append(t)
        return out

    def _impl(self, name: str, label: str, fn_of_inputs, *, isolated=False, note="") -> Impl:
        def build(L: int):
            ins = self.inputs(L)
            leaves = self._leaves(ins)
            return timed_pass(lambda: fn_of_inputs(**ins), leaves, self.recipe.backward)
        return Impl(name, label, build, isolated=isolated, note=note)

    def _ssmc_note(self, op: str) -> str:
        notes = []
        if not self.ssmc_on_kernel:
            notes.append(f"no compiled {op} kernel on this target: ssmc's op runs its torch engine")
        if self.recipe.backward:
            notes.append(backward_label(op, self.device))
        return "; ".join(notes)

    def roofline(self, L: int):
        if self.recipe.backward:
            return None  # the cost model has no backward work
        return roofline(self.work(L), self.target)


class SelectiveScanOp(_OpSubject):
    """ssmc.ops.selective_scan_fn (mamba-ssm's API, layout (b, d, L)) with B and C shared
    (b, N, L), no D / z / bias: the plain scan DESIGN.md measured."""

    name = "selective_scan"
    family = "selective_ssm/mamba1"
    DIMS = {"d": 256, "N": 16}

    def inputs(self, L: int) -> dict:
        torch, g = self._torch, self._gen(L)
        b, d, N = self.recipe.batch, self.dims["d"], self.dims["N"]
        t = {"u": torch.randn(b, d, L, generator=g),
             "delta": 0.5 * torch.rand(b, d, L, generator=g),
             "A": -4.0 * torch.rand(d, N, generator=g),
             "B": torch.randn(b, N, L, generator=g),
             "C": torch.randn(b, N, L, generator=g)}
        # A stays fp32 as in mamba-ssm; the activations take the benchmark's dtype.
        return {k: v.to(self.device, torch.float32 if k == "A" else self.dtype)
                for k, v in t.items()}

    def work(self, L: int):
        return cm.selective_mamba1(self.recipe.batch, L, self.dims["d"], self.dims["N"],
                                   "sequential", io_bytes=self._torch.finfo(self.dtype).bits // 8)

    def impls(self, baselines) -> list:
        from ssmc.semantics.scan_assoc import selective_scan_assoc
        from ssmc.semantics.selective import selective_scan_ref

        out = [self._impl("ssmc", f"ssmc {self.kernel}", self._ssmc,
                          note=self._ssmc_note("selective_scan"))]
        mode = "pointwise" if self.device == "cuda" else "generic"
        for name in baselines:
            if name == "eager":
                out.append(self._impl("eager", "eager selective_scan_ref (Python loop over L)",
                                      selective_scan_ref))
            elif name == "compile":
                out.append(self._impl("compile", "torch.compile(torch associative_scan)",
                                      compiled_associative_scan(mode), isolated=True))
            elif name == "assoc":
                out.append(self._impl("assoc", "eager Hillis-Steele scan (ssmc.semantics.scan_assoc)",
                                      selective_scan_assoc))
            elif name == "mamba_ssm":
                out.append(peers.mamba_ssm_selective_scan(self))
            elif name == "fla":
                out.append(peers.unavailable_impl("fla", "flash-linear-attention has no Mamba-1 "
                                                         "selective scan"))
        return out

    def _ssmc(self, **ins):
        from ssmc.ops import selective_scan_fn

        with warnings.catch_warnings():  # the fallback warning is already in the label
            warnings.simplefilter("ignore")
            return selective_scan_fn(**ins, backend="auto")


def _combine(left, right):
    a1, b1 = left
    a2, b2 = right
    return a2 * a1, a2 * b1 + b2


def associative_selective_scan(u, delta, A, B, C, mode="generic"):
    """The selective scan as torch's associative_scan over the pairs (exp(delta A), delta B u)
    along L: the formulation torch.compile can compile (a Python loop over L unrolls into L
    graph nodes).  'generic' is the combine mode that runs on the CPU."""
    import torch
    from torch._higher_order_ops.associative_scan import associative_scan

    dA = torch.exp(delta.float().unsqueeze(-1) * A[:, None, :])  # (b, d, L, N)
    dBu = (delta.float() * u.float()).unsqueeze(-1) * B.float().transpose(1, 2)[:, None]
    _, h = associative_scan(_combine, (dA, dBu), dim=2, combine_mode=mode)
    return torch.einsum("bdln,bnl->bdl", h, C.float()).to(u.dtype)


_compiled: dict = {}


def compiled_associative_scan(mode: str):
    import torch

    if mode not in _compiled:
        import functools

        _compiled[mode] = torch.compile(functools.partial(associative_selective_scan, mode=mode))
    return _compiled[mode]


class SsdOp(_OpSubject):
    """ssmc.ops.mamba_chunk_scan_combined (Mamba-2's API, (b, L, h, p)) without D / z / bias."""

    name = "ssd"
    family = "selective_ssm/ssd"
    DIMS = {"heads": 8, "head_dim": 32, "d_state": 64, "groups": 1, "chunk": 64}

    def inputs(self, L: int) -> dict:
        torch, g = self._torch, self._gen(L)
        b, h, p = self.recipe.batch, self.dims["heads"], self.dims["head_dim"]
        n, gr = self.dims["d_state"], self.dims["groups"]
        if h % gr:
            raise SsmcError(f"--dim groups={gr} must divide heads={h}")
        t = {"x": torch.randn(b, L, h, p, generator=g),
             "dt": 0.5 * torch.rand(b, L, h, generator=g),
             "A": -4.0 * torch.rand(h, generator=g),
             "B": torch.randn(b, L, gr, n, generator=g),
             "C": torch.randn(b, L, gr, n, generator=g)}
        return {k: v.to(self.device, torch.float32 if k == "A" else self.dtype)
                for k, v in t.items()}

    def work(self, L: int):
        from ssmc.runtime import dispatch

        alg = "sequential" if not self.ssmc_on_kernel else \
            dispatch.DEFAULT_ALGORITHM[(self.family, self.backend)]
        return cm.selective_ssd(self.recipe.batch, L, self.dims["heads"], self.dims["head_dim"],
                                self.dims["d_state"], alg, chunk=self.dims["chunk"],
                                io_bytes=self._torch.finfo(self.dtype).bits // 8)

    def impls(self, baselines) -> list:
        from ssmc.semantics.scan_assoc import ssd_chunked_ref
        from ssmc.semantics.selective import ssd_ref

        chunk = self.dims["chunk"]
        out = [self._impl("ssmc", f"ssmc {self.kernel}", self._ssmc,
                          note=self._ssmc_note("ssd"))]
        for name in baselines:
            if name == "eager":
                out.append(self._impl("eager", "eager ssd_ref (Python loop over L)", ssd_ref))
            elif name == "compile":
                out.append(self._impl("compile", "torch.compile(chunked SSD, ssd_chunked_ref)",
                                      compiled_chunked_ssd(chunk), isolated=True))
            elif name == "assoc":
                out.append(self._impl("assoc", "eager chunked SSD (ssd_chunked_ref)",
                                      lambda **k: ssd_chunked_ref(**k, chunk_size=chunk)))
            elif name == "mamba_ssm":
                out.append(peers.mamba_ssm_ssd(self))
            elif name == "fla":
                out.append(peers.fla_ssd(self))
        return out

    def _ssmc(self, **ins):
        from ssmc.ops import mamba_chunk_scan_combined

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return mamba_chunk_scan_combined(**ins, chunk_size=self.dims["chunk"], backend="auto")


def compiled_chunked_ssd(chunk: int):
    import functools

    import torch

    from ssmc.semantics.scan_assoc import ssd_chunked_ref

    key = ("ssd", chunk)
    if key not in _compiled:
        _compiled[key] = torch.compile(functools.partial(ssd_chunked_ref, chunk_size=chunk))
    return _compiled[key]


OP_SUBJECTS = {"selective_scan": SelectiveScanOp, "ssd": SsdOp}
