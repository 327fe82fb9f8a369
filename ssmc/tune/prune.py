"""Infeasible configs are pruned (optuna.TrialPruned), not failed: before compiling, from the
target descriptor and resource estimates; after compiling, from the compiler's own metadata
(registers, spills, shared memory of the Triton AOT build).  Pruned trials cost no timing and
tell the sampler where the wall is."""

from __future__ import annotations

import optuna

WORD = 4  # bytes of an fp32 value; states and accumulators are fp32 whatever the input dtype
REG_OVERHEAD = 32  # registers a kernel needs besides its state tile (addresses, loop, temps)


def _next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def check_cpu(config: dict, target, w) -> None:
    """TVM on a CPU.  Vector registers are not a hard limit there (states may live in stack
    slots), so only the plainly wasteful or illegal is pruned."""
    lanes = (target.vector_bits or 128) // 32
    vw = config.get("vector_width", lanes)
    cb = config.get("channel_block", vw)
    if vw > 2 * lanes:
        raise optuna.TrialPruned(f"vector_width {vw} is more than two {target.vector_bits}-bit "
                                 "registers: LLVM splits it into 4+ ops per vector")
    if cb < vw or cb % vw:
        # legalize() would round channel_block to a multiple of vector_width: the trial would
        # time another trial's kernel
        raise optuna.TrialPruned(f"channel_block {cb} is not a multiple of vector_width {vw}")
    if cb > max(w.channels, vw):
        raise optuna.TrialPruned(f"channel_block {cb} exceeds the node's {w.channels} channels")
    threads = config.get("threads", 0)
    if threads > target.units:
        raise optuna.TrialPruned(f"threads {threads} > {target.units} cores of the target")
    state_bytes = cb * w.key.d_state * WORD * (2 if getattr(w.node, "complex", False) else 1)
    if state_bytes > target.l2_bytes:
        raise optuna.TrialPruned(f"a task's state ({state_bytes} B) does not fit in L2 "
                                 f"({target.l2_bytes} B)")


def gpu_estimate(algorithm: str, config: dict, target, w) -> dict:
    """Registers per thread and shared memory per block a Triton config would need, estimated
    from the state tile one program keeps (the AOT build later says exactly)."""
    threads = (config.get("num_warps") or 4) * target.warp_size  # None: the kernel's choice
    N = _next_pow2(w.key.d_state)
    cplx = 2 if getattr(w.node, "complex", False) else 1
    block_d = config.get("block_d") or max(1, threads * 4 // (N * cplx))  # None: ~4 a thread
    smem = 0
    if w.family == "diagonal_ssm":
        values = _s4d_values(algorithm, config, w.node)
    elif w.family == "selective_ssm/ssd":
        chunk = config.get("chunk", 64)
        block_m = min(config.get("block_m") or 32, chunk)
        block_p = config.get("block_p", 32)
        block_k = min(config.get("block_k", 32), chunk)
        values = block_m * N + block_m * block_p  # the C tile and the output accumulator
        stages = config.get("num_stages", 2)
        smem = stages * (block_k * N + block_k * block_p) * WORD  # pipelined B and x tiles
    elif algorithm == "associative":
        values = block_d * N * cplx * config.get("block_l", 64) * 2  # (a, b) pairs over the tile
    else:
        values = block_d * N * cplx * 2  # the state and the step's (dA, dBu)
    return {"threads": threads, "regs_per_thread": REG_OVERHEAD + values // threads,
            "smem_bytes": smem}


def _s4d_values(algorithm: str, config: dict, node) -> int:
    """fp32 values one program of an S4D kernel keeps live.  The recurrence: Abar, Bbar, C and
    the state per (channel, stored mode), (re, im) when complex, over its channel block (None:
    the kernel's own choice).  The Vandermonde kernel: its (block_d, block_l) accumulator and
    the current mode's magnitude and phase over the tile."""
    if algorithm == "fft":
        return config.get("block_d", 16) * config.get("block_l", 64) * 3
    from ssmc.codegen.triton.common import auto_block_d  # imports triton: only when asked

    per_channel = _next_pow2(node.n_modes) * (2 if node.complex else 1)
    block_d = config.get("block_d") or auto_block_d(per_channel, config.get("num_warps", 4))
    return block_d * per_channel * 4


def check_gpu(algorithm: str, config: dict, target, w) -> dict:
    est = gpu_estimate(algorithm, config, target, w)
    if est["threads"] > target.max_threads_per_unit:
        raise optuna.TrialPruned(f"{est['threads']} threads > {target.max_threads_per_unit}")
    if est["regs_per_thread"] > target.regs_per_thread:
        raise optuna.TrialPruned(f"~{est['regs_per_thread']} registers a thread estimated > "
                                 f"{target.regs_per_thread} on {target.name}")
    if est["regs_per_thread"] * est["threads"] > target.regs_per_unit:
        raise optuna.TrialPruned(f"~{est['regs_per_thread'] * est['threads']} registers a block "
                                 f"> {target.regs_per_unit} on {target.name}")
    if est["smem_bytes"] > (target.smem_per_block or 0):
        raise optuna.TrialPruned(f"~{est['smem_bytes']} B shared memory > "
                                 f"{target.smem_per_block} B on {target.name}")
    return est


def before_compile(algorithm: str, config: dict, target, w) -> dict:
    """Raise TrialPruned for a config the target cannot run well; else the estimates."""
    if target.is_gpu:
        return check_gpu(algorithm, config, target, w)
    check_cpu(config, target, w)
    return {}


def after_compile(kernels) -> None:
    """From the AOT metadata of every kernel of the config (ssmc.codegen.triton.aot)."""
    for k in kernels:
        if k.n_spills > 0:
            raise optuna.TrialPruned(f"{k.kernel}: {k.n_spills} spill bytes ({k.n_regs} regs)")
        if not k.fits:
            raise optuna.TrialPruned(f"{k.kernel}: one block does not fit on a unit "
                                     f"({k.n_regs} regs, {k.shared} B shared)")
