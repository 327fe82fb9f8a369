"""TVM targets: the host CPU through LLVM, and CUDA for source generation.

The host CPU is asked of LLVM itself (`llvm_get_system_cpu`), not assumed: a machine sold as
Zen4 may expose only Zen3 features inside a VM (no AVX-512 in /proc/cpuinfo), and code built
for `-mcpu=znver4` would then die with SIGILL.
"""

from __future__ import annotations

import functools
import os

import tvm
from tvm.target import codegen as _llvm


def host_cpu_count() -> int:
    """CPUs this process may run on (the affinity mask, not the machine's total)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def configure_thread_pool() -> None:
    """Give TVM's thread pool one worker per usable CPU.

    Why: TVM halves std::thread::hardware_concurrency() on x86 to "ignore hyper-threading", so
    a 2-vCPU machine gets a 1-thread pool and every T.parallel loop runs serially (measured:
    2.6 ms instead of 1.6 ms).  TVM reads TVM_NUM_THREADS at each parallel launch, so setting it
    before the first kernel runs is enough; a value the user set wins."""
    os.environ.setdefault("TVM_NUM_THREADS", str(host_cpu_count()))


@functools.lru_cache(maxsize=None)
def host_cpu_name() -> str:
    """LLVM's name for this CPU (e.g. 'znver3', 'znver4', 'skylake-avx512')."""
    return str(_llvm.llvm_get_system_cpu())


@functools.lru_cache(maxsize=None)
def host_vector_lanes_f32() -> int:
    """fp32 lanes of the widest vector register LLVM will use here (8 for AVX2, 16 for
    AVX-512)."""
    feats = {str(f) for f in _llvm.llvm_get_cpu_features(host_target())}
    if "avx512f" in feats:
        return 16
    if "avx" in feats or "avx2" in feats:
        return 8
    return 4


@functools.lru_cache(maxsize=None)
def host_target(num_cores: int | None = None) -> tvm.target.Target:
    """The LLVM target for this machine."""
    return tvm.target.Target({
        "kind": "llvm",
        "mcpu": host_cpu_name(),
        "num-cores": int(num_cores or host_cpu_count()),
    })


@functools.lru_cache(maxsize=None)
def cuda_target(arch: str = "sm_90") -> tvm.target.Target:
    """A CUDA target; compiling for it needs no GPU (source and PTX only)."""
    return tvm.target.Target({"kind": "cuda", "arch": arch})


def target_kind(target: tvm.target.Target) -> str:
    return str(target.kind.name)


def target_key(target: tvm.target.Target) -> str:
    """A stable string for cache keys: the target's full JSON-ish description."""
    return str(target)
