"""Model mode: ranking the configs of a target that is not on this machine.

The compiler's analytic model (ssmc.costmodel) prices an algorithm for a shape on a target
descriptor; it knows nothing of launch knobs.  Here each launch of the config's real plan (its
grid and warps, from the kernel family) and its real resource use (registers and shared memory
from the Triton AOT build for the target) say how much of the machine the config occupies:

    resident blocks per unit = min(by threads, by registers, by shared memory)
    waves                    = ceil(programs / (units x resident blocks))
    busy lanes               = min(programs, units x resident) x threads per block

The throughput bounds (memory, flops, exps) stretch when fewer lanes are busy than the work
could fill; the dependent-step chain runs once per wave.  That ranks configs by occupancy and
parallelism, which is what the knobs change; the descriptor's figures (bandwidth, throughputs,
step latency, launch cost) are the calibration.  Records made this way say source "model".
"""

from __future__ import annotations

import dataclasses
import math

from ssmc import costmodel as cm

# Launches of an algorithm outside its Triton plan, which the cost model's work counts too:
# the torch.fft convolution after the S4D Vandermonde kernel (rfft of u and of K, irfft).
LIBRARY_LAUNCHES = {("diagonal_ssm", "fft"): 3}


def algorithm_work(w, algorithm: str, config: dict, target=None) -> cm.Work:
    node = w.node
    if w.family == "selective_ssm/mamba1":
        return cm.selective_mamba1(w.batch, w.seqlen, w.channels, node.d_state, algorithm,
                                   chunk=config.get("chunk", 64), cplx=node.complex)
    if w.family == "selective_ssm/ssd":
        h = node.heads
        return cm.selective_ssd(w.batch, w.seqlen, h, w.channels // h, node.d_state, algorithm,
                                chunk=node.chunk_size or config.get("chunk", 64))
    # the rest as select_algorithm prices them
    from ssmc.passes.select_algorithm import node_work

    return node_work(node, w.shape, algorithm, target)


def occupancy(launch, kernel, target) -> dict:
    """How one launch fills the target, from its grid, warps and the compiled resource use."""
    programs = math.prod(launch.grid)
    threads = launch.num_warps * target.warp_size
    by_threads = target.max_threads_per_unit // threads
    by_regs = target.regs_per_unit // max(1, kernel.n_regs * threads)
    by_smem = (target.smem_per_unit // kernel.shared) if kernel.shared else by_threads
    resident = max(1, min(by_threads, by_regs, by_smem, 32))  # 32: blocks per SM (cc 8.0+)
    slots = target.units * resident
    return {"programs": programs, "threads": threads, "resident": resident,
            "waves": math.ceil(programs / slots), "busy_lanes": min(programs, slots) * threads}


def estimate_us(w, algorithm: str, config: dict, target, plan, kernels) -> float:
    """Estimated microseconds of the config: the algorithm's work priced at the occupancy of
    its busiest launch, plus a launch cost per launch."""
    work = algorithm_work(w, algorithm, config, target)
    occ = [occupancy(launch, k, target) for launch, k in zip(plan.launches, kernels)]
    busy = min(o["busy_lanes"] for o in occ)
    waves = max(o["waves"] for o in occ)
    # the work's lanes as the config exposes them: never more than the lanes it keeps busy
    launches = len(plan.launches) + LIBRARY_LAUNCHES.get((w.family, algorithm), 0)
    shaped = dataclasses.replace(work, lanes=min(work.lanes, busy), depth=work.depth * waves,
                                 launches=launches)
    return cm.estimate(shaped, target, algorithm).time_us
