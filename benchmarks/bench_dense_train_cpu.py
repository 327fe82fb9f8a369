"""A training step (forward + backward) of the compiled lcde model (ir/lcde.yaml: the dense
selective SSM, N 16) on the CPU: the TVM scan with its adjoint kernel
(ssmc.codegen.tvm.dense_scan_bwd) against the associative torch scan autograd
differentiates (what ran before), side by side in one run, alternating step by step.

Run:  python benchmarks/bench_dense_train_cpu.py [block:L ...]     (default 4:4096 16:4096)

Batch 2, fp32; the loss is y.square().mean().  "associative" = executors._tvm_dense_trains
patched to False, so the same compiled model runs the torch scan.  Threads as the process
has them (torch's default, TVM one worker per core); the machine is shared: read the medians
together with the load printed beside them.
"""

from __future__ import annotations

import os
import statistics
import sys
import time

import torch

import ssmc
from ssmc.paths import zoo_dir
from ssmc.runtime import executors


def run(block: int, L: int, reps: int) -> str:
    torch.manual_seed(0)
    m = ssmc.compile(zoo_dir() / "lcde.yaml", "cpu", dims={"block": block}, seqlen=L).train()
    x = torch.randn(2, L, 8)
    tvm_rule = executors._tvm_dense_trains
    modes = {"associative": lambda x: False, "tvm": tvm_rule}
    times = {k: [] for k in modes}

    def step(mode):
        executors._tvm_dense_trains = modes[mode]
        m.zero_grad(set_to_none=True)
        t0 = time.perf_counter()
        m(x).square().mean().backward()
        return time.perf_counter() - t0

    try:
        for mode in modes:  # warm-up (kernel builds, allocator)
            step(mode), step(mode)
        for _ in range(reps):
            for mode in modes:
                times[mode].append(step(mode))
    finally:
        executors._tvm_dense_trains = tvm_rule
    a, t = (statistics.median(times[k]) * 1e3 for k in ("associative", "tvm"))
    return (f"lcde N16 bs{block} L{L} b2 fwd+bwd: associative {a:.2f} ms, tvm {t:.2f} ms, "
            f"{a / t:.1f}x (median of {reps}; load {os.getloadavg()[0]:.2f}, "
            f"torch threads {torch.get_num_threads()})")


if __name__ == "__main__":
    cases = sys.argv[1:] or ["4:4096", "16:4096"]
    for case in cases:
        block, L = (int(v) for v in case.split(":"))
        print(run(block, L, 7 if L >= 2048 else 30), flush=True)
