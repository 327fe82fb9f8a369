"""Mamba-1 selective scan on the CPU: ssmc's TVM kernels against the eager oracle and against
torch.compile of torch's associative_scan.

Run:  pytest benchmarks/bench_tvm_selective.py --benchmark-only      (pytest-benchmark)
      python benchmarks/bench_tvm_selective.py [--no-compile] [--cpu-time]   (a plain table;
          --cpu-time: one thread each, CPU time of the calling thread)

The default test run never collects this directory (testpaths = tests).  The shape is the
project's reference point: batch 2, d 256, L 1024, N 16, fp32 (DESIGN.md, "Measured on this
CPU").  torch.compile of the associative scan takes ~30 s to compile: it runs once per session.
On a shared machine the numbers move with the other processes: compare medians of one run.
"""

from __future__ import annotations

import os
import sys
import time

import pytest
import torch

pytest.importorskip("tvm")

from ssmc.codegen.tvm import selective_scan  # noqa: E402
from ssmc.semantics.selective import selective_scan_ref  # noqa: E402

B, D, L, N = 2, 256, 1024, 16
LENGTHS = (256, 1024, 4096, 16384)


def inputs(b=B, d=D, L=L, N=N, layout="bdl", flags=False):
    g = torch.Generator().manual_seed(0)
    u = torch.randn(b, d, L, generator=g)
    delta = 0.5 * torch.rand(b, d, L, generator=g)
    A = -torch.rand(d, N, generator=g) * 4
    Bm = torch.randn(b, N, L, generator=g)
    Cm = torch.randn(b, N, L, generator=g)
    kw = {}
    if flags:
        kw = dict(D=torch.randn(d, generator=g), z=torch.randn(b, d, L, generator=g),
                  delta_bias=torch.rand(d, generator=g), delta_softplus=True)
    if layout == "bld":
        u, delta, Bm, Cm = (t.transpose(1, 2).contiguous() for t in (u, delta, Bm, Cm))
        if "z" in kw:
            kw["z"] = kw["z"].transpose(1, 2).contiguous()
    return (u, delta, A, Bm, Cm), kw


# --------------------------------------------------------------------- torch baselines
def _combine(left, right):
    a1, b1 = left
    a2, b2 = right
    return a2 * a1, a2 * b1 + b2


def assoc_scan_torch(u, delta, A, Bm, Cm):
    """The scan as torch's associative_scan over pairs (exp(dt A), dt B u) along L."""
    from torch._higher_order_ops.associative_scan import associative_scan

    dA = torch.exp(delta.unsqueeze(-1) * A[:, None, :])              # (b, d, L, N)
    dBu = (delta * u).unsqueeze(-1) * Bm.transpose(1, 2)[:, None]    # (b, d, L, N)
    _, h = associative_scan(_combine, (dA, dBu), dim=2, combine_mode="generic")
    return torch.einsum("bdln,bnl->bdl", h, Cm)


_compiled_assoc = None


def compiled_assoc():
    global _compiled_assoc
    if _compiled_assoc is None:
        _compiled_assoc = torch.compile(assoc_scan_torch)
    return _compiled_assoc


# --------------------------------------------------------------------- pytest-benchmark
@pytest.fixture(scope="module", autouse=True)
def _warm_kernels():
    """Build (or load) the kernels outside the timed region."""
    for layout in ("bdl", "bld"):
        args, kw = inputs(L=8, layout=layout)
        selective_scan(*args, **kw, layout=layout)


@pytest.mark.benchmark(group="selective_scan b2 d256 L1024 N16")
@pytest.mark.parametrize("layout", ["bld", "bdl"])
def test_ssmc_tvm(benchmark, layout):
    args, kw = inputs(layout=layout)
    benchmark.extra_info["device"] = "cpu"
    benchmark(selective_scan, *args, **kw, layout=layout)


@pytest.mark.benchmark(group="selective_scan b2 d256 L1024 N16")
def test_ssmc_tvm_all_flags(benchmark):
    """D skip, silu(z) gate, delta_bias and softplus fused in (mamba-ssm layout)."""
    args, kw = inputs(flags=True)
    benchmark(selective_scan, *args, **kw)


@pytest.mark.benchmark(group="selective_scan b2 d256 L1024 N16")
def test_eager_reference(benchmark):
    args, kw = inputs()
    benchmark.pedantic(selective_scan_ref, args=args, rounds=5, iterations=1)


@pytest.mark.benchmark(group="selective_scan b2 d256 L1024 N16")
def test_torch_compile_associative_scan(benchmark):
    args, _ = inputs()
    fn = compiled_assoc()
    fn(*args)  # compile outside the timing
    benchmark.pedantic(fn, args=args, rounds=10, iterations=1, warmup_rounds=1)


@pytest.mark.benchmark(group="selective_scan linear in L (b2 d256 N16, bld)")
@pytest.mark.parametrize("length", LENGTHS)
def test_ssmc_tvm_length(benchmark, length):
    args, kw = inputs(L=length, layout="bld")
    benchmark.extra_info["ns_per_step"] = None
    benchmark(selective_scan, *args, **kw, layout="bld")
    benchmark.extra_info["ns_per_step"] = benchmark.stats["median"] * 1e9 / length


# --------------------------------------------------------------------- Mamba-2 SSD, conv1d
SSD_SHAPE = dict(b=2, L=1024, h=8, p=64, g=1, n=64)  # Mamba-2 block of d_model 256


def ssd_inputs(b, L, h, p, g, n):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(b, L, h, p, generator=gen)
    dt = torch.randn(b, L, h, generator=gen)
    A = -torch.rand(h, generator=gen) * 4
    B = torch.randn(b, L, g, n, generator=gen)
    C = torch.randn(b, L, g, n, generator=gen)
    return (x, dt, A, B, C), dict(D=torch.randn(h, generator=gen), dt_softplus=True,
                                  dt_bias=torch.rand(h, generator=gen))


@pytest.mark.benchmark(group="ssd b2 L1024 h8 p64 n64")
def test_ssmc_tvm_ssd(benchmark):
    from ssmc.codegen.tvm import ssd_scan

    args, kw = ssd_inputs(**SSD_SHAPE)
    ssd_scan(*args, **kw)
    benchmark(ssd_scan, *args, **kw)


@pytest.mark.benchmark(group="ssd b2 L1024 h8 p64 n64")
def test_ssd_eager_reference(benchmark):
    from ssmc.semantics.selective import ssd_ref

    args, kw = ssd_inputs(**SSD_SHAPE)
    benchmark.pedantic(ssd_ref, args=args, kwargs=kw, rounds=3, iterations=1)


def conv_inputs(b=B, L=L, c=2 * D, k=4):
    gen = torch.Generator().manual_seed(0)
    return (torch.randn(b, L, c, generator=gen), torch.randn(c, 1, k, generator=gen),
            torch.randn(c, generator=gen))


@pytest.mark.benchmark(group="causal conv1d+silu b2 L1024 c512 k4")
def test_ssmc_tvm_conv1d(benchmark):
    from ssmc.codegen.tvm import causal_conv1d

    args = conv_inputs()
    causal_conv1d(*args)
    benchmark(causal_conv1d, *args)


@pytest.mark.benchmark(group="causal conv1d+silu b2 L1024 c512 k4")
def test_torch_conv1d(benchmark):
    from ssmc.semantics.glue import causal_conv1d as conv_ref

    args = conv_inputs()
    benchmark(conv_ref, *args, "silu")


# --------------------------------------------------------------------- plain table
CLOCK = time.perf_counter


def _median_ms(fn, *args, rounds=30, **kw):
    fn(*args, **kw)
    times = []
    for _ in range(rounds):
        t0 = CLOCK()
        fn(*args, **kw)
        times.append(CLOCK() - t0)
    times.sort()
    return 1e3 * times[len(times) // 2]


def main(argv):
    global CLOCK
    if "--cpu-time" in argv:
        # One thread everywhere and the calling thread's CPU time: the work of each method,
        # much less disturbed by other processes than wall time on a shared machine.
        os.environ["TVM_NUM_THREADS"] = "1"
        torch.set_num_threads(1)
        CLOCK = time.thread_time
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"TVM_NUM_THREADS={os.environ.get('TVM_NUM_THREADS')}, cpu count {os.cpu_count()}, "
          f"clock {CLOCK.__name__}")
    rows = []
    for layout in ("bld", "bdl"):
        args, kw = inputs(layout=layout)
        rows.append((f"ssmc tvm ({layout})", _median_ms(selective_scan, *args, **kw,
                                                        layout=layout)))
    args, kw = inputs(flags=True)
    rows.append(("ssmc tvm (bdl, D/z/bias/softplus)", _median_ms(selective_scan, *args, **kw)))
    args, _ = inputs()
    ref = _median_ms(selective_scan_ref, *args, rounds=5)
    rows.append(("eager selective_scan_ref", ref))
    if "--no-compile" not in argv:
        t0 = time.time()
        fn = compiled_assoc()
        fn(*args)
        print(f"torch.compile of associative_scan: compiled in {time.time() - t0:.0f} s")
        rows.append(("torch.compile associative_scan", _median_ms(fn, *args, rounds=10)))
    best = rows[0][1]
    for name, ms in rows:
        print(f"{name:40s} {ms:9.3f} ms   ({ms / best:6.1f}x ssmc bld)")
    for length in LENGTHS:
        args, kw = inputs(L=length, layout="bld")
        ms = _median_ms(selective_scan, *args, **kw, layout="bld", rounds=20)
        print(f"L={length:6d}  {ms:8.3f} ms   {ms * 1e6 / length:8.1f} ns/step")
    from ssmc.codegen.tvm import causal_conv1d, ssd_scan
    from ssmc.semantics.glue import causal_conv1d as conv_ref
    from ssmc.semantics.selective import ssd_ref

    args, kw = ssd_inputs(**SSD_SHAPE)
    tv, ref = _median_ms(ssd_scan, *args, **kw), _median_ms(ssd_ref, *args, **kw, rounds=3)
    print(f"SSD {SSD_SHAPE}: ssmc tvm {tv:.3f} ms, eager ssd_ref {ref:.1f} ms ({ref / tv:.0f}x)")
    args = conv_inputs()
    tv, ref = _median_ms(causal_conv1d, *args), _median_ms(conv_ref, *args, "silu")
    print(f"conv1d+silu b2 L1024 c512 k4: ssmc tvm {tv:.3f} ms, torch {ref:.3f} ms")


if __name__ == "__main__":
    main(sys.argv[1:])
