"""Which implementation runs a kernel family for a backend, and the backend for a tensor.

The kernel modules are imported lazily: `import triton` or `import tvm` costs seconds, and a
machine may have only one of them working."""

from __future__ import annotations

import functools
import importlib
import os
import warnings

from ssmc.runtime.checks import ArgumentError

# (family, algorithm, backend) -> "module:function"; the reference is the fallback of every family.
KERNELS = {
    ("selective_ssm/mamba1", "sequential", "triton"): "ssmc.codegen.triton.selective_scan.sequential:selective_scan_sequential",
    ("selective_ssm/mamba1", "associative", "triton"): "ssmc.codegen.triton.selective_scan.associative:selective_scan_associative",
    ("selective_ssm/mamba1", "chunked", "triton"): "ssmc.codegen.triton.selective_scan.chunked:selective_scan_chunked",
    ("selective_ssm/mamba1", "sequential", "tvm"): "ssmc.codegen.tvm:selective_scan",
    ("selective_ssm/ssd", "chunked", "triton"): "ssmc.codegen.triton.ssd.chunked:ssd_chunked",
    ("selective_ssm/ssd", "sequential", "tvm"): "ssmc.codegen.tvm:ssd_scan",
    # composite kernels (ssmc.codegen.composite): library GEMMs / FFTs + compiled TVM / Triton parts
    ("nested_recursion", "tree", "tvm"): "ssmc.codegen.composite.nested:nested_tree",
    ("nested_recursion", "tree", "triton"): "ssmc.codegen.composite.nested:nested_tree",
    ("selective_ssm/dense", "sequential", "tvm"): "ssmc.codegen.composite.dense:dense_ssm_sequential",
    ("selective_ssm/dense", "associative", "tvm"): "ssmc.codegen.composite.dense:dense_ssm_associative",
    ("selective_ssm/dense", "chunked", "tvm"): "ssmc.codegen.composite.dense:dense_ssm_chunked",
    ("diagonal_ssm", "sequential", "tvm"): "ssmc.codegen.composite.diagonal:diagonal_sequential",
    ("diagonal_ssm", "fft", "tvm"): "ssmc.codegen.composite.diagonal:diagonal_fft",
    # S4D in Triton: the recurrence, and the Vandermonde kernel + torch.fft (channels-first:
    # executors.diagonal transposes)
    ("diagonal_ssm", "sequential", "triton"): "ssmc.codegen.triton.s4d.recurrent:s4d_recurrent",
    ("diagonal_ssm", "fft", "triton"): "ssmc.codegen.triton.s4d.vandermonde:s4d_conv",
    # issue 10: 2-D SSM (TVM loop order follows the algorithm: see executors.ssm2d) and PLRNN
    ("ssm2d", "wavefront", "tvm"): "ssmc.codegen.tvm.ssm2d:ssm2d",
    ("ssm2d", "sequential", "tvm"): "ssmc.codegen.tvm.ssm2d:ssm2d",
    ("ssm2d", "wavefront", "triton"): "ssmc.codegen.triton.ssm2d.wavefront:ssm2d_wavefront",
    ("recurrence", "sequential", "tvm"): "ssmc.codegen.tvm.plrnn:plrnn",
    # the Triton sequential kernels of the PLRNN (HRF convolution fused) and of the dense
    # selective SSM (the scan; its projections are torch GEMMs)
    ("recurrence", "sequential", "triton"): "ssmc.codegen.triton.plrnn.sequential:plrnn_sequential",
    ("selective_ssm/dense", "sequential", "triton"): "ssmc.codegen.triton.dense.sequential:dense_ssm_sequential",
}
REFERENCE = {
    "selective_ssm/mamba1": "ssmc.semantics.selective:selective_scan_ref",
    "selective_ssm/ssd": "ssmc.semantics.selective:ssd_ref",
    "nested_recursion": "ssmc.semantics.nested:nested_ref",
    "ssm2d": "ssmc.semantics.ssm2d:ssm2d_ref",
    "recurrence": "ssmc.semantics.recurrence:plrnn_ref",
}
# Nodes a kernel computes in its epilogue (the fuse pass folds such a node into the SSM node
# that feeds it; the executor hands the folded node's parameters to the kernel):
# (family, algorithm, backend) -> the ops it takes.  The PLRNN kernels take the causal HRF
# convolution of their trajectory (direct, in the kernel -- the Triton one in a register ring
# of the last outputs -- or by FFT after it, by length).
EPILOGUES = {("recurrence", "sequential", "tvm"): ("conv",),
             ("recurrence", "sequential", "triton"): ("conv",)}
# The algorithm each backend runs when the caller (an op call) did not pick one.
DEFAULT_ALGORITHM = {("selective_ssm/mamba1", "triton"): "sequential",
                     ("selective_ssm/mamba1", "tvm"): "sequential",
                     ("selective_ssm/ssd", "triton"): "chunked",
                     ("selective_ssm/ssd", "tvm"): "sequential"}


def pick_backend(backend: str, like) -> str:
    """'auto' -> triton on a GPU tensor, tvm on a CPU tensor."""
    if backend != "auto":
        if backend == "triton" and like.device.type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
            raise ArgumentError("backend: 'triton' needs CUDA/ROCm tensors (or TRITON_INTERPRET=1 "
                                "for the interpreter); these are on the cpu")
        if backend == "tvm" and like.device.type not in ("cpu", "cuda"):
            raise ArgumentError(f"backend: 'tvm' runs on cpu or cuda tensors, got {like.device}")
        return backend
    return "triton" if like.device.type == "cuda" else "tvm"


def _load(path: str):
    mod, fn = path.split(":")
    return getattr(importlib.import_module(mod), fn)


@functools.lru_cache(maxsize=None)
def kernel(family: str, algorithm: str | None, backend: str, strict: bool = False):
    """The function running `family` with `algorithm` on `backend`; the reference when there is
    no such kernel (with one warning), or an error when `strict`."""
    if backend == "reference":
        return _load(REFERENCE[family])
    algorithm = algorithm or DEFAULT_ALGORITHM.get((family, backend))
    path = KERNELS.get((family, algorithm, backend))
    if path is not None:
        try:
            return _load(path)
        except (ImportError, AttributeError) as e:
            if strict:
                raise ArgumentError(f"backend: {backend} kernel for {family}/{algorithm} is unavailable: {e}") from None
    elif strict:
        raise ArgumentError(f"backend: no {backend} kernel for {family} ({algorithm}); "
                            f"available: {sorted(k[2] for k in KERNELS if k[0] == family)} or 'reference'")
    warnings.warn(f"ssmc: no {backend} kernel for {family}/{algorithm} here; running the eager reference",
                  stacklevel=3)
    return _load(REFERENCE[family])


def available(family: str, algorithm: str, backend: str) -> bool:
    return (family, algorithm, backend) in KERNELS


def takes_epilogue(family: str, algorithm: str | None, backend: str, op: str) -> bool:
    """Whether the kernel running `family` with `algorithm` on `backend` computes an `op` node
    that reads its output (EPILOGUES)."""
    return op in EPILOGUES.get((family, algorithm, backend), ())


def algorithms_with_kernel(family: str, backend: str) -> tuple:
    """The algorithms of `family` that `backend` has a kernel for (registry order)."""
    return tuple(alg for (fam, alg, be) in KERNELS if fam == family and be == backend)


def backend_of(target) -> str:
    """The KERNELS backend a target descriptor's code runs on: tvm-llvm -> 'tvm', triton-cuda /
    triton-hip -> 'triton'."""
    return "tvm" if target.backend.startswith("tvm") else "triton"


def selective_scan_impl(backend: str, requested: str = "auto"):
    return kernel("selective_ssm/mamba1", None, backend, strict=requested != "auto")


def ssd_impl(backend: str, requested: str = "auto"):
    fn = kernel("selective_ssm/ssd", None, backend, strict=requested != "auto")
    if backend == "reference" or fn is _load(REFERENCE["selective_ssm/ssd"]):
        # The oracle takes no chunk size: the result does not depend on it.
        return lambda *a, chunk_size=None, **k: fn(*a, **k)
    return fn
