"""The roofline arithmetic on a made-up target, checked against hand-computed figures."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from ssmc import costmodel as cm
from ssmc.bench.roofline import linear_work, rates, roofline

# 100 GB/s, 1 TFLOP/s fp32, 4 TFLOP/s matrix, 2 units x 5 exp/clk x 1 GHz = 1e10 exp/s
TARGET = SimpleNamespace(mem_bandwidth_gbs=100.0, fp32_tflops=1.0, bf16_tflops=4.0, units=2,
                         exp_per_clk_per_unit=5.0, clock_ghz=1.0)


def test_rates():
    r = rates(TARGET)
    assert r == {"bytes_per_s": 1e11, "flops_per_s": 1e12, "tc_flops_per_s": 4e12,
                 "exps_per_s": 1e10}


def test_one_kernel_takes_its_largest_bound():
    w = cm.Work(bytes=2e8, flops=1e9, exps=5e7, depth=1, lanes=1)
    r = roofline(w, TARGET)
    # memory 2e8/1e11 = 2 ms; compute 1e9/1e12 = 1 ms; exp 5e7/1e10 = 5 ms
    assert r.memory_s == pytest.approx(2e-3)
    assert r.compute_s == pytest.approx(1e-3)
    assert r.exp_s == pytest.approx(5e-3)
    assert r.time_s == pytest.approx(5e-3) and r.bound == "exp"
    assert r.fraction(10e-3) == pytest.approx(0.5)
    assert r.exp_fraction(20e-3) == pytest.approx(0.25)
    assert r.fraction(0) is None


def test_kernels_in_sequence_add_their_own_bounds():
    mem = cm.Work(bytes=3e8, flops=0, exps=0, depth=1, lanes=1)  # 3 ms memory-bound
    mm = cm.Work(bytes=0, flops=4e9, exps=0, depth=1, lanes=1, tensor_core=True)  # 1 ms matrix
    r = roofline([mem, mm], TARGET)
    # each kernel waits for its own bound: 3 ms + 1 ms, not max(3 ms, 1 ms)
    assert r.time_s == pytest.approx(4e-3)
    assert r.bound == "memory" and r.kernels == 2
    assert r.as_dict()["bytes"] == 3e8


def test_selective_scan_work_by_hand():
    # b=2, L=1024, d=256, N=16, fp32: exps b L d N; bytes 4 (b L d) x 4 B + 2 (b L N) x 4 B
    w = cm.selective_mamba1(2, 1024, 256, 16, "sequential")
    assert w.exps == 2 * 1024 * 256 * 16
    assert w.bytes == 2 * 1024 * 256 * 4 * 4 + 2 * 1024 * 2 * 16 * 4
    r = roofline(w, TARGET)
    assert r.exp_s == pytest.approx(8388608 / 1e10)
    assert r.bound == "exp"


def test_linear_work():
    w = linear_work(rows=10, fan_in=3, fan_out=5)
    assert w.flops == 2 * 10 * 3 * 5
    assert w.bytes == 4 * (30 + 15 + 50)


def test_whole_model_counts_every_ssm_node_and_dense_layer():
    from ssmc.bench.model_cases import model_works
    from ssmc.ir.spec import load_spec
    from ssmc.passes import PassContext, run_pipeline
    from ssmc.paths import zoo_dir
    from ssmc.targets import load_target

    g = load_spec(zoo_dir() / "mamba.yaml")
    bindings = {"batch": 1, "seqlen": 32}
    lowered = run_pipeline(g, PassContext(target=load_target("cpu"), bindings=bindings,
                                          dtype=g.dtype))
    works = model_works(lowered, bindings)
    # 2 layers x (in_proj, x_proj, dt_proj, out_proj, ssm) + the lm head
    assert len(works) == 11
    assert sum(w.exps for w in works) == 2 * 32 * 256 * 16  # the two scans' exps
    head = linear_work(32, 128, 256)
    assert head in works
