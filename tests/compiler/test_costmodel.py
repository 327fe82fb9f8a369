"""The analytic cost model: hand-computed bounds on a made-up target, and the shape of the
estimates (monotonic in L, more independent lanes never slower)."""

from __future__ import annotations

import dataclasses
import itertools

import pytest

from ssmc import costmodel as cm
from ssmc.targets import Target, list_targets, load_target

# A made-up machine with round numbers: 4 units x 8 lanes = 32 lanes, 10 GB/s, 1 TFLOP/s fp32,
# 2 TFLOP/s on the matrix units, 1 exp per clock per unit at 1 GHz (4e9 exp/s), 10 ns per
# dependent step, 5 us per launch.
TOY = Target(name="toy", description="made up", backend="tvm-llvm", arch="x86_64", units=4,
             warp_size=1, clock_ghz=1.0, l2_bytes=1 << 20, mem_bandwidth_gbs=10.0, fp32_tflops=1.0,
             bf16_tflops=2.0, exp_per_clk_per_unit=1.0, lanes_per_unit=8, step_latency_ns=10.0,
             launch_overhead_us=5.0)


def test_memory_bound_is_bytes_over_bandwidth_plus_launches():
    w = cm.Work(bytes=1e6, flops=0, exps=0, depth=0, lanes=32, launches=2)
    e = cm.estimate(w, TOY, "x")
    # 1e6 B / 1e10 B/s = 100 us, plus 2 launches x 5 us
    assert e.time_us == pytest.approx(110.0)
    assert e.bound == "memory"
    assert e.algorithm == "x" and e.work is w


def test_compute_bound_scales_with_utilisation():
    full = cm.estimate(cm.Work(bytes=0, flops=1e9, exps=0, depth=0, lanes=32), TOY, "a")
    half = cm.estimate(cm.Work(bytes=0, flops=1e9, exps=0, depth=0, lanes=16), TOY, "a")
    many = cm.estimate(cm.Work(bytes=0, flops=1e9, exps=0, depth=0, lanes=1e6), TOY, "a")
    assert full.bound == half.bound == "compute"
    assert full.time_us == pytest.approx(1e9 / 1e12 * 1e6 + 5)  # 1000 us + a launch
    assert half.time_us == pytest.approx(2000 + 5)  # half the lanes busy: half the rate
    assert many.time_us == pytest.approx(full.time_us)  # utilisation saturates at 1


def test_tensor_core_work_uses_the_bf16_rate():
    e = cm.estimate(cm.Work(bytes=0, flops=1e9, exps=0, depth=0, lanes=32, tensor_core=True), TOY, "a")
    assert e.time_us == pytest.approx(500 + 5)


def test_exp_bound():
    e = cm.estimate(cm.Work(bytes=0, flops=0, exps=4e6, depth=0, lanes=32), TOY, "a")
    assert e.bound == "exp"
    assert e.time_us == pytest.approx(4e6 / 4e9 * 1e6 + 5)  # 1000 us
    assert TOY.exp_gops == pytest.approx(4.0)


def test_latency_bound():
    e = cm.estimate(cm.Work(bytes=8, flops=1, exps=0, depth=1000, lanes=1, launches=3), TOY, "a")
    assert e.bound == "latency"
    assert e.time_us == pytest.approx(1000 * 10e-3 + 3 * 5)  # 10 us of steps, 15 us of launches


def test_time_is_the_largest_bound_not_the_sum():
    # memory 100 us, compute 50 us, exp 25 us, latency 10 us
    w = cm.Work(bytes=1e6, flops=5e7, exps=1e5, depth=1000, lanes=32, launches=0)
    e = cm.estimate(w, TOY, "a")
    assert e.bound == "memory"
    assert e.time_us == pytest.approx(100.0)


def test_row_has_the_figures_explain_prints():
    w = cm.Work(bytes=1e6, flops=0, exps=0, depth=0, lanes=32, launches=2)
    row = cm.estimate(w, TOY, "sequential").row()
    assert row["algorithm"] == "sequential" and row["bound"] == "memory"
    assert row["time_us"] == pytest.approx(110.0)
    assert {f.name for f in dataclasses.fields(cm.Work)} <= set(row)


def test_mamba1_sequential_work_by_hand():
    b, L, d, N = 1, 10, 2, 3
    w = cm.selective_mamba1(b, L, d, N, "sequential")
    assert w.bytes == b * L * d * 4 * 4 + b * L * 2 * N * 4  # u, delta, z, y ; B, C in fp32
    assert w.flops == b * L * d * N * 6
    assert w.exps == b * L * d * N
    assert w.depth == L and w.lanes == b * d and w.launches == 1
    cplx = cm.selective_mamba1(b, L, d, N, "sequential", cplx=True)
    assert cplx.flops == 4 * w.flops and cplx.exps == 2 * w.exps


def test_unknown_algorithm_is_a_key_error():
    with pytest.raises(KeyError):
        cm.selective_mamba1(1, 8, 4, 4, "fft")
    with pytest.raises(KeyError):
        cm.diagonal(1, 8, 4, 4, "wavefront")


# Every (kind, algorithm) the selection weighs, as a function of L.
FAMILIES = {
    "mamba1": (lambda L, a: cm.selective_mamba1(2, L, 256, 16, a), ("sequential", "associative", "chunked")),
    "mamba1_complex": (lambda L, a: cm.selective_mamba1(2, L, 256, 16, a, cplx=True),
                       ("sequential", "associative", "chunked")),
    "ssd": (lambda L, a: cm.selective_ssd(2, L, 8, 32, 64, a), ("sequential", "associative", "chunked")),
    "dense": (lambda L, a: cm.selective_dense(2, L, 16, 16, 4, a), ("sequential", "associative", "chunked")),
    "diagonal": (lambda L, a: cm.diagonal(2, L, 64, 64, a), ("sequential", "fft", "associative", "chunked")),
    "ssm2d": (lambda L, a: cm.ssm2d(2, L, 8, 32, 16, a), ("sequential", "wavefront", "axis")),
    "nested": (lambda L, a: cm.nested(2, L, 32, 30, a), ("tree", "sequential")),
    "recurrence": (lambda L, a: cm.recurrence(2, L, 3, 16, a), ("sequential",)),
}
LENGTHS = (1, 2, 7, 16, 64, 100, 1024, 4096, 16384, 65536)


@pytest.mark.parametrize("target", list_targets() + ["toy"])
def test_monotonic_in_length(target):
    t = TOY if target == "toy" else load_target(target)
    for kind, (fn, algs) in FAMILIES.items():
        for a in algs:
            times = [cm.estimate(fn(L, a), t, a).time_us for L in LENGTHS]
            for (L0, t0), (L1, t1) in itertools.pairwise(zip(LENGTHS, times)):
                assert t1 >= t0 * (1 - 1e-9), f"{kind}/{a} on {target}: L {L0} -> {L1}: {t0} -> {t1} us"


@pytest.mark.parametrize("target", ["cpu", "sm_90", "gfx942", "toy"])
def test_more_lanes_never_slower(target):
    t = TOY if target == "toy" else load_target(target)
    for kind, (fn, algs) in FAMILIES.items():
        for a, L in itertools.product(algs, (16, 4096)):
            w = fn(L, a)
            base = cm.estimate(w, t, a).time_us
            for factor in (2, 16, 1024):
                more = dataclasses.replace(w, lanes=w.lanes * factor)
                assert cm.estimate(more, t, a).time_us <= base * (1 + 1e-12), (kind, a, L, factor)


def test_more_bandwidth_never_slower():
    fast = dataclasses.replace(TOY, mem_bandwidth_gbs=TOY.mem_bandwidth_gbs * 4)
    for kind, (fn, algs) in FAMILIES.items():
        for a in algs:
            w = fn(1024, a)
            assert cm.estimate(w, fast, a).time_us <= cm.estimate(w, TOY, a).time_us, (kind, a)


def test_gpu_beats_cpu_on_long_parallel_work():
    w = cm.selective_mamba1(2, 16384, 256, 16, "chunked")
    assert cm.estimate(w, load_target("sm_90"), "chunked").time_us < \
        cm.estimate(w, load_target("cpu"), "chunked").time_us


def test_sequential_depth_dominates_short_lanes_on_a_gpu():
    """The sequential scan has b*d lanes and L dependent steps: on an H100 at a long L its
    latency chain costs more than the chunked form's two passes."""
    h100 = load_target("sm_90")
    seq = cm.estimate(cm.selective_mamba1(2, 16384, 256, 16, "sequential"), h100, "sequential")
    chk = cm.estimate(cm.selective_mamba1(2, 16384, 256, 16, "chunked"), h100, "chunked")
    assert chk.time_us < seq.time_us
