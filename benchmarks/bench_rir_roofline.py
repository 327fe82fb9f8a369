"""RIR's floor on this CPU: the GRC GEMMs of the tree, level by level, against the whole tree,
its eager module and the recursive oracle, in one run.

Why this exists: issue 10 asks for 20x over the eager reference at b 2, L 4096, d 256, k 32.
Every merge of the tree is two dense GEMMs (2d -> 4d, 4d -> 4d: 48 d^2 FLOPs) and no merge can
be skipped or shared (each node is a child exactly once, and the LayerNorm between levels
stops any algebra across them), so the ~26 GFLOP of GEMMs are a floor for any fp32
implementation.  This prints how long those GEMMs alone take at each level's shape (oneDNN,
as the tree runs them) and the FLOP rate they reach, next to the full programs.

Run:  SSMC_BENCH_THREADS=2 python benchmarks/bench_rir_roofline.py
      pytest benchmarks/bench_rir_roofline.py --benchmark-only
"""

from __future__ import annotations

import os
import statistics
import sys

import pytest
import torch

pytest.importorskip("tvm")

sys.path.insert(0, os.path.dirname(__file__))
from bench_issue10b_cpu import B, _rir, _split, times_ms  # noqa: E402

from ssmc.codegen.composite.nested import build_plan  # noqa: E402
from ssmc.runtime import gemm  # noqa: E402
from ssmc.semantics.modules_misc import NestedRecursion  # noqa: E402

L, D, K = 4096, 256, 32


def level_gemms():
    """(rows P, fn) per level of the plan: fn runs that level's two GEMMs (GELU as a post-op)."""
    torch.manual_seed(0)
    w = NestedRecursion(D, chunk=K).eval().cell.weights()
    plan = build_plan((L,) * B, L, K, "bbt")
    out = []
    for pairs, _ in plan.levels:
        lr = torch.randn(pairs.shape[0], 2 * D)
        out.append((pairs.shape[0], lambda lr=lr: gemm.linear(
            gemm.linear_gelu(lr, w.w1, w.b1), w.w2, w.b2)))
    return out


def test_rir_gemm_floor(benchmark):
    levels = level_gemms()

    def run():
        for _, fn in levels:
            fn()

    with torch.no_grad():
        benchmark.pedantic(run, rounds=5, iterations=1, warmup_rounds=1)


def main() -> None:
    reps = 5
    print(f"torch threads {torch.get_num_threads()}; b {B} L {L} d {D} k {K}; medians of {reps}")
    floor = 0.0
    for P, fn in level_gemms():
        t = statistics.median(times_ms(fn, reps))
        floor += t
        print(f"  level of {P:5d} merges: GEMMs {t:8.2f} ms  {48 * D * D * P / t / 1e6:6.0f} "
              "GFLOP/s")
    print(f"  all levels' GEMMs (the floor)                  {floor:10.2f} ms")
    for name, entry in _rir().items():
        fn, scale = _split(entry)
        t = statistics.median([t * scale for t in times_ms(fn, reps)])
        print(f"  {name:<50} {t:10.2f} ms  {t / floor:5.2f}x the floor")


if __name__ == "__main__":
    torch.set_num_threads(int(os.environ.get("SSMC_BENCH_THREADS", "1")))
    main()
