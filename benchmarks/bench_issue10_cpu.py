"""Issue 10 on the CPU: Chimera's 2-D SSM and the PLRNN + HRF model, ssmc's TVM kernels against
their eager references, side by side in one run.

Run:  pytest benchmarks/bench_issue10_cpu.py --benchmark-only      (pytest-benchmark)
      python benchmarks/bench_issue10_cpu.py [--quick]              (a plain table of medians)

Sizes (the issue's "realistic size"):
  chimera: the selective, bidirectional SSM2D node of ir/chimera.yaml, 64 variates x 1024
    steps, d_model 16, state 16, batch 1.  Eager: the module's forward (its default method, the
    torch wavefront: ~8 min here, timed once) and its `method="loop"` double loop (~30 s).
    ssmc: the executor of the compiled node (x_proj/dt_proj by torch, then the TVM kernel) in
    both loop orders (wavefront = the node's algorithm; rows = 'sequential').
  convssm: ir/convssm.yaml (PLRNN latent 16, 3 inputs, HRF 32 taps at TR 2 s, 10 regions),
    64 trajectories x 1024 steps.  Eager: the reference model.  ssmc: the compiled model (the
    recurrence kernel; the conv node runs torch's FFT), and the kernel with the HRF conv fused
    plus the read-out matmul.
`--quick` (or SSMC_BENCH_QUICK=1) shrinks the chimera grid to 256 steps; `--skip-slow` leaves out
the torch-wavefront eager run; `--torch-threads N` sets torch's intra-op threads (both sides).
On a shared machine the numbers move with the other processes: compare medians of one run.
"""

from __future__ import annotations

import os
import statistics
import sys
import time

import pytest
import torch

pytest.importorskip("tvm")

import ssmc  # noqa: E402
from ssmc.codegen.ssm2d_recurrence import ssm2d_config, ssm2d_operands  # noqa: E402
from ssmc.codegen.tvm.plrnn import plrnn  # noqa: E402
from ssmc.codegen.tvm.ssm2d import ssm2d  # noqa: E402
from ssmc.paths import zoo_dir  # noqa: E402
from ssmc.semantics.model import build_reference  # noqa: E402

QUICK = os.environ.get("SSMC_BENCH_QUICK") == "1" or "--quick" in sys.argv
CHIMERA = dict(b=1, T=256 if QUICK else 1024, V=64)  # d_model 16, d_state 16 (the spec)
CONVSSM = dict(b=64, L=1024)


# --------------------------------------------------------------------- subjects
def chimera_subject():
    torch.manual_seed(0)
    model = ssmc.compile(zoo_dir() / "chimera.yaml", "cpu", dims={"variates": CHIMERA["V"]},
                         seqlen=CHIMERA["T"], batch=CHIMERA["b"]).eval()
    mod = model.ssm2d  # the SSM2D node's module (the reference module, same weights)
    x = torch.randn(CHIMERA["b"], CHIMERA["T"], CHIMERA["V"], mod.d_model)

    def kernel(order):
        cfg = ssm2d_config("tvm", "sequential" if order == "rows" else "wavefront", {})

        def run():
            args, softplus = ssm2d_operands(mod, x)
            return ssm2d(*args, D=mod.D, bidirectional=True, dt_softplus=softplus, config=cfg)
        return run

    return {
        "eager (module forward: torch wavefront)": lambda: mod(x),
        "eager (module, method='loop')": lambda: mod(x, method="loop"),
        "ssmc TVM wavefront": kernel("wavefront"),
        "ssmc TVM rows": kernel("rows"),
    }


def convssm_subject():
    torch.manual_seed(0)
    b, L = CONVSSM["b"], CONVSSM["L"]
    model = ssmc.compile(zoo_dir() / "convssm.yaml", "cpu", seqlen=L, batch=b).eval()
    ref = build_reference(model.source_graph).eval()
    ref.load_state_dict(model.state_dict())
    s = torch.randn(b, L, 3)
    p, conv, read = model.plrnn, model.hrf, model.readout

    def fused():
        _, zc = plrnn(s, p.A, p.W, p.h0, p.C, hrf=conv.kernel, conv="fused")
        return read(zc)

    return {
        "eager (reference model)": lambda: ref(s),
        "ssmc compiled model (TVM recurrence, HRF conv folded in)": lambda: model(s),
        "ssmc TVM recurrence + fused HRF conv, torch read-out": fused,
    }


def _median(fn, repeats: int) -> float:
    with torch.no_grad():
        fn()  # build / load kernels, warm caches
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


# --------------------------------------------------------------------- pytest-benchmark
@pytest.fixture(scope="module")
def chimera():
    return chimera_subject()


@pytest.fixture(scope="module")
def convssm():
    return convssm_subject()


def _bench(benchmark, fn, slow: bool):
    with torch.no_grad():
        fn()
        if slow:
            benchmark.pedantic(fn, rounds=1, iterations=1)
        else:
            benchmark.pedantic(fn, rounds=9, iterations=1, warmup_rounds=1)


@pytest.mark.parametrize("name", ["eager (module forward: torch wavefront)",
                                  "eager (module, method='loop')", "ssmc TVM wavefront",
                                  "ssmc TVM rows"])
def test_chimera(benchmark, chimera, name):
    benchmark.group = f"chimera ssm2d b{CHIMERA['b']} T{CHIMERA['T']} V{CHIMERA['V']} d16 N16"
    _bench(benchmark, chimera[name], slow=name.startswith("eager"))


@pytest.mark.parametrize("name", ["eager (reference model)",
                                  "ssmc compiled model (TVM recurrence, HRF conv folded in)",
                                  "ssmc TVM recurrence + fused HRF conv, torch read-out"])
def test_convssm(benchmark, convssm, name):
    benchmark.group = f"convssm b{CONVSSM['b']} L{CONVSSM['L']} M16 HRF32"
    _bench(benchmark, convssm[name], slow=False)


# --------------------------------------------------------------------- plain table
def _flag_value(name: str, default: str | None = None) -> str | None:
    return sys.argv[sys.argv.index(name) + 1] if name in sys.argv else default


def main() -> None:
    from ssmc.codegen.tvm.target import configure_thread_pool

    configure_thread_pool()
    if _flag_value("--torch-threads"):
        torch.set_num_threads(int(_flag_value("--torch-threads")))
    print(f"torch threads {torch.get_num_threads()}, TVM threads "
          f"{os.environ.get('TVM_NUM_THREADS')}, load average {os.getloadavg()}")
    rows = []
    for title, subject in (("chimera", chimera_subject()), ("convssm", convssm_subject())):
        timings = {}
        for name, fn in subject.items():
            if "--skip-slow" in sys.argv and "torch wavefront" in name:
                continue
            slow = title == "chimera" and name.startswith("eager")
            timings[name] = _median(fn, 1 if slow else 9)
            print(f"  {title:8} {name:58} {timings[name] * 1e3:12.2f} ms", flush=True)
        eager = [v for k, v in timings.items() if k.startswith("eager")]
        for name, t in timings.items():
            if not name.startswith("eager"):
                rows.append((title, name, t, [e / t for e in eager]))
    print("\nspeed-up over each eager reference (same run):")
    for title, name, t, ratios in rows:
        print(f"  {title:8} {name:58} " + "  ".join(f"{r:9.1f}x" for r in ratios))


if __name__ == "__main__":
    main()
