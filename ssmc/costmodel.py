"""The analytic cost model the algorithm selection and the tuner's model mode use.

Each (node kind, algorithm) is described by four numbers for a shape: bytes moved, flops, exps
(special-function calls) and the sequential depth (dependent steps), plus how many independent
lanes of work there are.  Against a target descriptor a time is the largest of the memory, compute
and exp bounds, stretched when the work has fewer independent lanes than the machine, plus the
dependent-step latency chain and kernel launches.  The figures that decide are kept so that
`ssmc explain` can show them.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Work:
    bytes: float
    flops: float
    exps: float
    depth: float  # dependent steps on the critical path
    lanes: float  # independent work items available at once
    launches: int = 1
    tensor_core: bool = False  # flops can use the matrix units (bf16 rate)
    fft_flops: float = 0.0  # of `flops`, those a library FFT runs (at target.fft_efficiency)


@dataclass(frozen=True)
class Estimate:
    algorithm: str
    time_us: float
    bound: str  # memory | compute | exp | latency
    work: Work

    def row(self) -> dict:
        d = asdict(self.work)
        d.update(algorithm=self.algorithm, time_us=round(self.time_us, 3), bound=self.bound)
        return d


def _hw(target):
    """(lanes the machine runs at once, seconds per dependent step) from the descriptor."""
    lanes = target.units * target.lanes_per_unit
    return lanes, target.step_latency_ns * 1e-9


def estimate(work: Work, target, algorithm: str) -> Estimate:
    lanes, step_s = _hw(target)
    util = min(1.0, work.lanes / lanes) if lanes else 1.0
    flops_rate = (target.bf16_tflops if work.tensor_core else target.fp32_tflops) * 1e12 * util
    t_mem = work.bytes / (target.mem_bandwidth_gbs * 1e9)
    # a library FFT reaches a fraction of the rate the generated kernels do (target descriptor)
    eff = getattr(target, "fft_efficiency", 1.0) or 1.0
    t_cmp = (work.flops + work.fft_flops * (1.0 / eff - 1.0)) / flops_rate if flops_rate else 0.0
    exp_rate = target.exp_per_clk_per_unit * target.units * target.clock_ghz * 1e9  # exps per second
    t_exp = work.exps / (exp_rate * util) if exp_rate else 0.0
    # The critical path: however many lanes there are, dependent steps run one after the other;
    # when there are more work items than lanes their steps interleave, which the throughput
    # bounds above already charge.
    t_lat = work.depth * step_s
    bounds = {"memory": t_mem, "compute": t_cmp, "exp": t_exp, "latency": t_lat}
    bound = max(bounds, key=bounds.get)
    total = max(bounds.values()) + work.launches * target.launch_overhead_us * 1e-6
    return Estimate(algorithm, total * 1e6, bound, work)


# ---- work per node kind and algorithm -------------------------------------------------------------

def _log2(x: float) -> float:
    return math.log2(max(2.0, x))


def selective_mamba1(b, L, d, N, algorithm, io_bytes=4, chunk=64, cplx=False) -> Work:
    c = 2 if cplx else 1
    io = b * L * d * io_bytes * 4 + b * L * 2 * N * io_bytes  # u, delta, z, y ; B, C
    step_flops = b * L * d * N * 6 * c * c
    exps = b * L * d * N * c
    if algorithm == "sequential":
        return Work(io, step_flops, exps, depth=L, lanes=b * d)
    if algorithm == "associative":  # Hillis-Steele over L: log2(L) combines per element
        lg = _log2(L)
        return Work(io + b * L * d * N * 8 * c, step_flops * lg, exps, depth=lg * 4, lanes=b * d * L,
                    launches=1)
    if algorithm == "chunked":  # local scan per chunk + carry pass: about twice the work
        nch = max(1.0, L / chunk)
        return Work(io * 1.2 + b * nch * d * N * 8 * c, step_flops * 2, exps, depth=chunk + nch,
                    lanes=b * d * nch, launches=2)
    raise KeyError(algorithm)


def selective_ssd(b, L, h, p, N, algorithm, io_bytes=4, chunk=64) -> Work:
    io = b * L * h * p * io_bytes * 3 + b * L * 2 * N * io_bytes + b * L * h * 4
    if algorithm == "sequential":
        return Work(io, b * L * h * p * N * 4, b * L * h, depth=L, lanes=b * h * p)
    if algorithm == "associative":
        lg = _log2(L)
        return Work(io + b * L * h * p * N * 8, b * L * h * p * N * 4 * lg, b * L * h, depth=lg * 4,
                    lanes=b * h * L * p)
    if algorithm == "chunked":
        nch = max(1.0, L / chunk)
        mm = b * h * nch * (2 * chunk * chunk * N + 2 * chunk * chunk * p + 4 * chunk * p * N)
        return Work(io + b * h * nch * p * N * 8, mm, b * L * h, depth=nch + math.log2(chunk),
                    lanes=b * h * nch * chunk, launches=4, tensor_core=True)
    raise KeyError(algorithm)


def selective_dense(b, L, d, N, block, algorithm) -> Work:
    blk = block or N
    nblk = N // blk
    io = b * L * (d + N) * 4 + b * L * nblk * blk * blk * 4
    matvec = b * L * nblk * blk * blk * 2
    build = b * L * d * nblk * blk * blk * 2  # A(x_t) = A0 + sum_k x^k A_k, every algorithm
    if algorithm == "sequential":  # built per step inside the kernel, lanes = its vector lanes
        return Work(io, matvec + build, 0, depth=L, lanes=b * N * blk)
    if algorithm == "associative":  # matrix-matrix combines: N^3 per combine, log2(L) levels
        lg = _log2(L)
        return Work(io * lg, b * L * nblk * blk ** 3 * 2 * lg + build, 0, depth=lg * blk,
                    lanes=b * L * nblk * blk)
    if algorithm == "chunked":  # codegen.composite.dense.chunked_scan: the chunks' end states
        # and transition products (bs + 1 runs), carries, a second run: (bs + 2) x the scan
        chunk = 64
        nch = max(1.0, L / chunk)
        return Work(io * (blk + 2), (matvec + build) * (blk + 2), 0,
                    depth=2 * chunk + nch * blk, lanes=b * N * blk * nch, launches=3)
    raise KeyError(algorithm)


def diagonal(b, L, d, N, algorithm, cplx=True) -> Work:
    c = 4 if cplx else 1  # a complex multiply-add is 4 real ones
    io = b * L * d * 4 * 2
    if algorithm == "sequential":
        return Work(io, b * L * d * N * 2 * c, 0, depth=L, lanes=b * d)
    if algorithm == "fft":  # Vandermonde kernel (d, N, L) + rfft/irfft of length 2L per (b, d)
        kernel = d * N * L * 2 * c
        fft = b * d * 2 * 2.5 * (2 * L) * _log2(2 * L) + d * 2.5 * 2 * L * _log2(2 * L)
        return Work(io + d * L * 4 * 3 + b * d * 2 * L * 8 * 2, kernel + fft, d * N * 2, depth=_log2(2 * L) * 3,
                    lanes=b * d * L, launches=4, fft_flops=fft)
    if algorithm == "associative":
        lg = _log2(L)
        return Work(io + b * L * d * N * 8, b * L * d * N * 2 * c * lg, 0, depth=lg * 4, lanes=b * d * L)
    if algorithm == "chunked":
        chunk = 64
        nch = max(1.0, L / chunk)
        return Work(io * 1.2, b * L * d * N * 4 * c, 0, depth=chunk + nch, lanes=b * d * nch, launches=2)
    raise KeyError(algorithm)


def ssm2d(b, T, V, d, N, algorithm, cell_parallel: bool = True) -> Work:
    """cell_parallel: whether the wavefront kernel runs a diagonal's cells in parallel (the
    Triton kernel, on a GPU).  The TVM CPU kernels vectorise over channels in either loop
    order, so there the wavefront gains no lanes and pays for its diagonal's states, which
    outgrow the caches: rows were measured 0.58-1.0x the wavefront's time (b2 d16 N16, T x V
    from 4096 x 8 to 128 x 512; 56 vs 70 ms at the issue's 1024 x 64)."""
    io = b * T * V * d * 4 * 2
    flops = b * T * V * d * N * 12
    if algorithm == "sequential":
        return Work(io, flops, 0, depth=T * V, lanes=b * d)
    if algorithm == "wavefront":  # cells with t + v constant in parallel: T + V - 1 steps
        if not cell_parallel:  # each cell's state written and read back through memory
            return Work(io * 1.5 + b * T * V * d * N * 4 * 2, flops, 0, depth=T + V - 1,
                        lanes=b * d, launches=1)
        diag = min(T, V)
        return Work(io * 1.5, flops, 0, depth=T + V - 1, lanes=b * d * diag, launches=1)
    if algorithm == "axis":  # only when the coupling terms vanish: two independent 1-D scans
        return Work(io * 2, flops, 0, depth=max(T, V), lanes=b * d * min(T, V), launches=2)
    raise KeyError(algorithm)


def nested_shape(L, k, inner="bbt"):
    """(levels, merges, widest level's merges) of the level-synchronous plan for one row of
    length L with outer arity k (the plan of ssmc.codegen.composite.nested, counted without
    building it).  Beam: levels are beam steps, merges count one per beam."""
    n, levels, merges, widest = int(L), 0, 0, 0
    k = max(2, int(k))
    while n > 1:
        sizes = [k] * (n // k) + ([n % k] if n % k else []) if n >= k + k // 2 else [n]
        if inner == "rnn":
            depth, m, wide = max(sizes), n, len(sizes)
        elif inner == "beam":
            depth, m, wide = max(sizes) - 1, n - len(sizes), len(sizes)
        else:
            depth, m, wide = math.ceil(math.log2(max(sizes))), n - len(sizes), n // 2
        levels, merges, widest = levels + depth, merges + m, max(widest, wide)
        n = len(sizes)
    return levels, merges, widest


def nested(b, L, d, k, algorithm, inner="bbt", beam=7) -> Work:
    # GRC cell: W1 (2d -> 4d), W2 (4d -> 4d): 2*(8d^2 + 16d^2) flops per merge.  The tree runs
    # the exact plan's levels, one launch group (gather, 2 GEMMs, GELU, epilogue) per level.
    cell = 2 * (8 + 16) * d * d
    levels, merges, widest = nested_shape(L, k, inner)
    merges = b * max(merges, 1)
    flops, ew = merges * cell, merges * 4 * d
    if inner == "beam":  # every step scores every adjacent pair of every beam (gather + GELU)
        flops = flops * beam + b * L * min(k, L) * beam * d * 2
        ew = ew * beam + b * L * min(k, L) * beam * d
    if algorithm == "tree":
        return Work(b * L * d * 4 * 4, flops, ew, depth=max(levels, 1),
                    lanes=b * max(widest, 1) * d, launches=5 * levels + 1, tensor_core=True)
    if algorithm == "sequential":
        return Work(b * L * d * 4 * 4, flops, ew, depth=merges, lanes=d, launches=merges)
    raise KeyError(algorithm)


NESTED_DEFAULT_CHUNK = 30  # the authors' k
NESTED_CHUNKS = (4, 8, 16, 30, 32, 64, 128, 256)


def choose_nested_chunk(b, L, d, target, inner="bbt", beam=7, algorithms=("tree",)):
    """The outer arity k with the lowest estimate when a spec leaves it open; estimates within
    1% count as a tie, broken towards the authors' k = 30 (the tree shape is part of the
    model's meaning, so the compiler only moves away from it for a real gain).
    Returns (k, {k: best estimate in us})."""
    times = {}
    for k in NESTED_CHUNKS:
        times[k] = min(estimate(nested(b, L, d, k, a, inner, beam), target, a).time_us
                       for a in algorithms)
    best = min(times.values())
    tied = [k for k, t in times.items() if t <= best * 1.01]
    k = min(tied, key=lambda c: (abs(math.log(c / NESTED_DEFAULT_CHUNK)), c))
    return k, times


def recurrence(b, L, d_in, M, algorithm) -> Work:
    return Work(b * L * (d_in + M) * 4, b * L * (M * M * 2 + M * d_in * 2), 0, depth=L, lanes=b * M)
