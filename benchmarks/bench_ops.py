"""The selective scan op (issue 5's reference point: batch 2, d_inner 256, L 1024, N 16, fp32):
ssmc's kernel against the Python-loop eager reference and torch.compile of torch's associative
scan, side by side in one run; then ssmc's time against L from 256 to 16384 (linear growth:
ns per step in extra_info).  And the SSD op, ssmc against its eager reference.

The torch.compile baseline is compiled in-process here, once (its first call takes minutes on
2 cores; the compile time goes into extra_info).  `ssmc bench` runs it in a child process under
a time cap instead.
"""

from __future__ import annotations

import time

import pytest

from ssmc.bench.subject import Recipe

from .conftest import impl_of

SCAN = Recipe(subject="selective_scan", target="cpu", batch=2, dims={"d": 256, "N": 16})
SSD = Recipe(subject="ssd", target="cpu", batch=2)
L_REF = 1024
LENGTHS = (256, 1024, 4096, 16384)
GROUP = "selective_scan b2 d256 L1024 N16 fp32 forward"


def _first_call(call, benchmark):
    """The untimed first call (kernel build, cache load or compilation), its time recorded."""
    t0 = time.perf_counter()
    call()
    benchmark.extra_info["first_call_s"] = round(time.perf_counter() - t0, 3)


@pytest.mark.benchmark(group=GROUP)
def test_selective_scan_ssmc(benchmark, subjects):
    subject = subjects(SCAN)
    call = impl_of(subject, "ssmc").build(L_REF)
    _first_call(call, benchmark)
    benchmark.extra_info["kernel"] = subject.kernel
    benchmark.extra_info["roofline_s"] = subject.roofline(L_REF).time_s
    benchmark.pedantic(call, rounds=30, iterations=1, warmup_rounds=2)


@pytest.mark.benchmark(group=GROUP)
def test_selective_scan_eager_loop(benchmark, subjects):
    call = impl_of(subjects(SCAN), "eager").build(L_REF)
    benchmark.pedantic(call, rounds=5, iterations=1, warmup_rounds=1)


@pytest.mark.benchmark(group=GROUP)
def test_selective_scan_torch_compile_associative_scan(benchmark, subjects):
    call = impl_of(subjects(SCAN), "compile").build(L_REF)
    _first_call(call, benchmark)  # the compilation
    benchmark.pedantic(call, rounds=5, iterations=1, warmup_rounds=1)


@pytest.mark.benchmark(group="selective_scan ssmc time vs L (b2 d256 N16 fp32)")
@pytest.mark.parametrize("length", LENGTHS)
def test_selective_scan_ssmc_vs_length(benchmark, subjects, length):
    call = impl_of(subjects(SCAN), "ssmc").build(length)
    call()
    benchmark.pedantic(call, rounds=max(5, 40 * 1024 // length), iterations=1, warmup_rounds=1)
    benchmark.extra_info["ns_per_step"] = benchmark.stats["median"] * 1e9 / length


@pytest.mark.benchmark(group="ssd b2 h8 p32 n64 L1024 fp32 forward")
@pytest.mark.parametrize("name", ["ssmc", "eager"])
def test_ssd(benchmark, subjects, name):
    subject = subjects(SSD)
    call = impl_of(subject, name).build(L_REF)
    call()
    benchmark.extra_info["ssmc_kernel"] = subject.kernel
    benchmark.pedantic(call, rounds=5, iterations=1, warmup_rounds=1)
