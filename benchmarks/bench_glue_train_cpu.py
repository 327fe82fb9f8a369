"""Forward + backward of the Mamba blocks' glue on the CPU: the depthwise causal conv1d + SiLU
and the rmsnorm (plain and Mamba-2's gated form) on their TVM forward and backward kernels
(ssmc.codegen.composite.causal_conv_train / rmsnorm_train, what a compiled model trains with)
against the reference semantics (ssmc.semantics.glue) under autograd, side by side in one run,
alternating call by call.

Run:  python benchmarks/bench_glue_train_cpu.py [reps]      (default 40)

Sizes: mamba2's conv (b2 L1024, c = d_inner + 2 d_state = 384, k 4) and norm (D 256), fp32,
one torch thread (TVM's pool as it comes: one worker per core).  The machine may be shared:
read the medians with the load printed beside them.
"""

from __future__ import annotations

import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from ssmc.codegen.composite.causal_conv_train import causal_conv1d_train
from ssmc.codegen.composite.rmsnorm_train import rmsnorm_train
from ssmc.semantics.glue import RMSNorm, causal_conv1d


_LEAVES: list = []


def _leaves(*shapes):
    ts = [torch.randn(*s).requires_grad_() for s in shapes]
    _LEAVES.extend(ts)
    return ts


def cases():
    """name -> {implementation: fn() running one forward + backward}."""
    b, L, c, k, D = 2, 1024, 384, 4, 256
    x, w, bias = _leaves((b, L, c), (c, 1, k), (c,))
    gy = torch.randn(b, L, c)
    h, z = _leaves((b, L, D), (b, L, D))
    gn = torch.randn(b, L, D)
    norm = RMSNorm(D, 1e-5)
    _LEAVES.extend(norm.parameters())
    return {
        "conv1d+silu b2 L1024 c384 k4": {
            "reference": lambda: causal_conv1d(x, w, bias, "silu").backward(gy),
            "tvm": lambda: causal_conv1d_train(x, w, bias, "silu").backward(gy)},
        "rmsnorm b2 L1024 D256": {
            "reference": lambda: norm(h).backward(gn),
            "tvm": lambda: rmsnorm_train(h, norm.weight, norm.eps).backward(gn)},
        "gated rmsnorm b2 L1024 D256": {
            "reference": lambda: norm(h * F.silu(z)).backward(gn),
            "tvm": lambda: rmsnorm_train(h, norm.weight, norm.eps, z=z).backward(gn)},
    }


def run(reps: int) -> list[str]:
    lines = []
    for name, impls in cases().items():
        times = {k: [] for k in impls}
        for fn in impls.values():  # warm-up: kernel builds, the allocator
            fn(), fn()
        for _ in range(reps):
            for key, fn in impls.items():
                for t in _LEAVES:  # as zero_grad(set_to_none=True) before a step
                    t.grad = None
                t0 = time.perf_counter()
                fn()
                times[key].append(time.perf_counter() - t0)
        ref, tvm = (statistics.median(times[k]) * 1e3 for k in ("reference", "tvm"))
        lines.append(f"{name} fwd+bwd: reference {ref:.2f} ms, tvm {tvm:.2f} ms, "
                     f"{ref / tvm:.1f}x (median of {reps}; load {os.getloadavg()[0]:.2f})")
    return lines


if __name__ == "__main__":
    torch.set_num_threads(1)
    torch.manual_seed(0)
    for line in run(int(sys.argv[1]) if len(sys.argv) > 1 else 40):
        print(line, flush=True)
