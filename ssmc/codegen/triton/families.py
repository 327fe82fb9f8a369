"""The registry of Triton kernel families: one entry per algorithm.

For each: its Config dataclass (the knobs), its search space file (schedules/spaces/), the
function that builds its launch plan from launcher arguments, and a realistic example problem
made of `meta` tensors (shapes only, no memory), which is what `aot.py` compiles.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from ssmc.codegen.triton.dense.backward import plan_dense_scan_backward
from ssmc.codegen.triton.dense.sequential import (DenseSequentialConfig, _scan_operands,
                                                  plan_dense_ssm)
from ssmc.codegen.triton.plrnn.backward import plan_plrnn_backward
from ssmc.codegen.triton.plrnn.sequential import PlrnnSequentialConfig, plan_plrnn
from ssmc.codegen.triton.s4d.recurrent import S4dRecurrentConfig, plan_s4d_recurrent
from ssmc.codegen.triton.s4d.vandermonde import VandermondeConfig, plan_s4d_conv
from ssmc.codegen.triton.s4d.vandermonde_bwd import VandermondeBwdConfig, plan_vandermonde_bwd
from ssmc.codegen.triton.selective_scan.associative import AssociativeScanConfig, \
    plan_associative
from ssmc.codegen.triton.selective_scan.backward import SelectiveScanBwdConfig, \
    backward_problem, plan_backward
from ssmc.codegen.triton.selective_scan.chunked import ChunkedScanConfig, plan_chunked
from ssmc.codegen.triton.selective_scan.problem import selective_scan_problem
from ssmc.codegen.triton.selective_scan.sequential import SequentialScanConfig, \
    plan_sequential
from ssmc.codegen.triton.ssd.backward import SsdBwdConfig, plan_ssd_backward, \
    ssd_backward_problem
from ssmc.codegen.triton.ssd.chunked import SsdChunkedConfig, plan_ssd_chunked
from ssmc.codegen.triton.ssm2d.backward import Ssm2dWavefrontBwdConfig, plan_ssm2d_wavefront_bwd
from ssmc.codegen.triton.ssm2d.wavefront import Ssm2dWavefrontConfig, plan_ssm2d_wavefront
from ssmc.codegen.triton.ssd.problem import ssd_problem
from ssmc.errors import SsmcError, did_you_mean


@dataclass(frozen=True)
class KernelFamily:
    name: str
    config: type
    space: str  # file name under schedules/spaces/
    # (launcher kwargs, config) -> LaunchPlan; the launcher is the kernel function
    # ssmc.runtime.dispatch runs, so that the tuner can plan from the arguments it calls
    plan: Callable
    example: Callable  # (dtype, device) -> launcher kwargs of a realistic problem
    dtypes: tuple = (torch.float32, torch.float16, torch.bfloat16)


# ----------------------------------------------------------------- example problems (meta)
# Sizes of the models people run: Mamba-130m (d_inner 1536, N 16), Mamba-2 (headdim 64,
# dstate 128), S4D (N 64 stored modes); L = 4096.

def _selective_example(dtype, device="meta"):
    b, d, L, N = 2, 1536, 4096, 16
    t = dict(dtype=dtype, device=device)
    f32 = dict(dtype=torch.float32, device=device)
    return dict(u=torch.empty(b, d, L, **t), delta=torch.empty(b, d, L, **t),
                A=torch.empty(d, N, **f32), B=torch.empty(b, N, L, **t),
                C=torch.empty(b, N, L, **t), D=torch.empty(d, **f32),
                z=torch.empty(b, d, L, **t), delta_bias=torch.empty(d, **f32),
                delta_softplus=True, return_last_state=True)


def _selective_bwd_example(dtype, device="meta"):
    """The backward of `_selective_example`'s problem (ssmc::selective_scan_bwd's arguments),
    from the forward's checkpoints every 16 steps, as training runs it."""
    fwd = _selective_example(dtype, device)
    b, d, L = fwd["u"].shape
    N, K = fwd["A"].shape[1], 16
    B = fwd["B"].unsqueeze(1)  # (b, 1, N, L): the op takes (d, N) or grouped B/C
    return dict(grad_y=torch.empty_like(fwd["u"]),
                grad_last=torch.empty(b, d, N, dtype=torch.float32, device=device),
                u=fwd["u"], delta=fwd["delta"], A=fwd["A"], B=B, C=torch.empty_like(B),
                D=fwd["D"], z=fwd["z"], delta_bias=fwd["delta_bias"], initial_state=None,
                checkpoints=torch.empty(b, L // K, d, N, dtype=torch.float32, device=device),
                delta_softplus=True, layout="bdl", checkpoint_every=K)


def _ssd_example(dtype, device="meta"):
    b, L, h, p, g, n = 2, 4096, 24, 64, 1, 128
    t = dict(dtype=dtype, device=device)
    f32 = dict(dtype=torch.float32, device=device)
    return dict(x=torch.empty(b, L, h, p, **t), dt=torch.empty(b, L, h, **t),
                A=torch.empty(h, **f32), B=torch.empty(b, L, g, n, **t),
                C=torch.empty(b, L, g, n, **t), D=torch.empty(h, **f32),
                z=torch.empty(b, L, h, p, **t), dt_bias=torch.empty(h, **f32),
                dt_softplus=True, return_final_states=True)


def _ssd_bwd_example(dtype, device="meta"):
    """The backward of `_ssd_example`'s problem as the Triton SSD backward's kernel gets it
    (ssmc.codegen.triton.ssd.backward.ssd_scan_backward: the effective step (b, L, h) fp32),
    from the forward's checkpoints every 64 steps."""
    fwd = _ssd_example(dtype, device)
    b, L, h, p = fwd["x"].shape
    n, K = fwd["B"].shape[-1], 64
    f32 = dict(dtype=torch.float32, device=device)
    return dict(grad_y=torch.empty_like(fwd["x"]), grad_final=torch.empty(b, h, p, n, **f32),
                x=fwd["x"], dt_eff=torch.empty(b, L, h, **f32), A=fwd["A"], B=fwd["B"],
                C=fwd["C"], D=fwd["D"], z=fwd["z"], initial_states=None, seq_idx=None,
                checkpoints=torch.empty(b, L // K, h, p, n, **f32), chunk=K)


def _s4d_params(device):
    d, N = 1024, 64
    c64 = dict(dtype=torch.complex64, device=device)
    return dict(Abar=torch.empty(d, N, **c64), Bbar=torch.empty(d, N, **c64),
                C=torch.empty(d, N, **c64))


def _s4d_recurrent_example(dtype, device="meta"):
    b, d, L = 2, 1024, 4096
    return dict(u=torch.empty(b, d, L, dtype=dtype, device=device), **_s4d_params(device),
                D=torch.empty(d, dtype=torch.float32, device=device), return_final_state=True)


def _vandermonde_example(dtype, device="meta"):
    # s4d_conv's arguments (what dispatch runs): u only gives the kernel's length L
    b, d, L = 2, 1024, 4096
    return dict(u=torch.empty(b, d, L, dtype=dtype, device=device), **_s4d_params(device),
                D=torch.empty(d, dtype=torch.float32, device=device))


def _vandermonde_bwd_example(dtype, device="meta"):
    """The transposed Vandermonde of `_vandermonde_example`'s kernel, as S4D's training runs
    it: complex64 Abar and K's gradient (d, L) fp32 (complex128 / fp64 for fp64, the
    gradchecks' dtype, which runs its own tile)."""
    d, N, L = 1024, 64, 4096
    cplx = torch.complex128 if dtype == torch.float64 else torch.complex64
    return dict(Abar=torch.empty(d, N, dtype=cplx, device=device),
                gK=torch.empty(d, L, dtype=dtype, device=device))


def _ssm2d_example(dtype, device="meta"):
    """Chimera's selective 2-D SSM: 64 variates x 1024 steps, d 16, N 16, both v directions."""
    b, T, V, d, N = 2, 1024, 64, 16, 16
    t = dict(dtype=dtype, device=device)
    f32 = dict(dtype=torch.float32, device=device)
    return dict(x=torch.empty(b, T, V, d, **t),
                **{a: torch.empty(d, N, **f32) for a in ("A1", "A2", "A3", "A4")},
                **{p: torch.empty(b, T, V, N, **t) for p in ("B1", "B2", "C1", "C2")},
                dt_t=torch.empty(b, T, V, d, **t), dt_v=torch.empty(b, T, V, d, **t),
                D=torch.empty(d, **f32), bidirectional=True)


def _ssm2d_bwd_example(dtype, device="meta"):
    """The backward of `_ssm2d_example`'s problem with Chimera's softplus steps (D's terms are
    torch's)."""
    kw = _ssm2d_example(dtype, device)
    del kw["D"]
    return dict(grad_y=torch.empty_like(kw["x"], dtype=torch.float32), **kw, dt_softplus=True)


def _plrnn_example(dtype, device="meta"):
    """convSSM: 64 trajectories x 1024 steps, 16 latent units, 3 inputs, SPM's HRF of 32 taps
    convolved in the kernel (the fused form the fuse pass makes; z is then not written)."""
    b, L, M, k_in, taps = 64, 1024, 16, 3, 32
    f32 = dict(dtype=torch.float32, device=device)
    return dict(s=torch.empty(b, L, k_in, dtype=dtype, device=device), A=torch.empty(M, **f32),
                W=torch.empty(M, M, **f32), h0=torch.empty(M, **f32),
                C=torch.empty(M, k_in, **f32), hrf=torch.empty(M, taps, **f32),
                return_trajectory=False)


def _plrnn_bwd_example(dtype, device="meta"):
    """The adjoint of `_plrnn_example`'s recurrence, as training runs it (the trajectory z
    from the fp32 forward, the HRF conv in torch after it, no initial state)."""
    fwd = _plrnn_example(dtype, device)
    b, L, _ = fwd["s"].shape
    M = fwd["A"].shape[0]
    z = torch.empty(b, L, M, dtype=torch.float32, device=device)
    return dict(gz=torch.empty_like(z), z=z, s=fwd["s"], A=fwd["A"], W=fwd["W"], C=fwd["C"])


def _dense_example(dtype, device="meta"):
    """The linear CDE (ir/lcde.yaml) at the issue's size: d 32, N 16 in blocks of 4, L 4096."""
    b, L, d, N, bs = 8, 4096, 32, 16, 4
    f32 = dict(dtype=torch.float32, device=device)
    return dict(x=torch.empty(b, L, d, dtype=dtype, device=device),
                A_k=torch.empty(d, N // bs, bs, bs, **f32), W_B=torch.empty(N, d, **f32),
                W_C=torch.empty(d, N, **f32), D=torch.empty(d, **f32),
                A_0=torch.empty(N // bs, bs, bs, **f32))


def _dense_bwd_example(dtype, device="meta"):
    """The adjoint scan of `_dense_example`'s layer, as training runs it: the scan's operands
    (A_k built into the transitions in the kernel) and its trajectory h (b, L, N) fp32."""
    fwd = _dense_example(dtype, device)
    ops = _scan_operands(fwd["x"], fwd["A_k"], fwd["W_B"], "linear", None, fwd["A_0"], None)
    h = torch.empty_like(ops["u"], dtype=torch.float32)
    del ops["u"]
    return dict(gh=torch.empty_like(h), h=h, **ops)


# ----------------------------------------------------------------- plans from launcher kwargs

def _selective(plan_fn):
    def plan(kwargs, config):
        return plan_fn(selective_scan_problem(**kwargs), config)
    return plan


def _ssd_plan(kwargs, config):
    config = config or SsdChunkedConfig()
    kwargs = dict(kwargs)
    chunk = kwargs.pop("chunk_size", None) or config.chunk
    return plan_ssd_chunked(ssd_problem(chunk_size=chunk, **kwargs), config, chunk)


FAMILIES = {f.name: f for f in [
    KernelFamily("selective_scan.sequential", SequentialScanConfig,
                 "triton_selective_scan_sequential.yaml", _selective(plan_sequential),
                 _selective_example),
    KernelFamily("selective_scan.associative", AssociativeScanConfig,
                 "triton_selective_scan_associative.yaml", _selective(plan_associative),
                 _selective_example),
    KernelFamily("selective_scan.chunked", ChunkedScanConfig,
                 "triton_selective_scan_chunked.yaml", _selective(plan_chunked),
                 _selective_example),
    KernelFamily("selective_scan.backward", SelectiveScanBwdConfig,
                 "triton_selective_scan_backward.yaml",
                 lambda kw, cfg: plan_backward(backward_problem(**kw), cfg),
                 _selective_bwd_example),
    KernelFamily("ssd.chunked", SsdChunkedConfig, "triton_ssd_chunked.yaml", _ssd_plan,
                 _ssd_example),
    KernelFamily("ssd.backward", SsdBwdConfig, "triton_ssd_backward.yaml",
                 lambda kw, cfg: plan_ssd_backward(ssd_backward_problem(**kw), cfg),
                 _ssd_bwd_example),
    KernelFamily("s4d.recurrent", S4dRecurrentConfig, "triton_s4d_recurrent.yaml",
                 lambda kw, cfg: plan_s4d_recurrent(**kw, config=cfg), _s4d_recurrent_example),
    KernelFamily("s4d.vandermonde", VandermondeConfig, "triton_s4d_vandermonde.yaml",
                 lambda kw, cfg: plan_s4d_conv(**kw, config=cfg), _vandermonde_example,
                 dtypes=(torch.float32,)),
    KernelFamily("ssm2d.wavefront", Ssm2dWavefrontConfig, "triton_ssm2d_wavefront.yaml",
                 lambda kw, cfg: plan_ssm2d_wavefront(**kw, config=cfg), _ssm2d_example),
    KernelFamily("plrnn.sequential", PlrnnSequentialConfig, "triton_plrnn_sequential.yaml",
                 lambda kw, cfg: plan_plrnn(**kw, config=cfg), _plrnn_example),
    KernelFamily("dense.sequential", DenseSequentialConfig, "triton_dense_sequential.yaml",
                 lambda kw, cfg: plan_dense_ssm(**kw, config=cfg), _dense_example),
    # training's backward kernels (the selective scan's and SSD's are above)
    KernelFamily("s4d.vandermonde_bwd", VandermondeBwdConfig,
                 "triton_s4d_vandermonde_bwd.yaml",
                 lambda kw, cfg: plan_vandermonde_bwd(**kw, config=cfg), _vandermonde_bwd_example,
                 dtypes=(torch.float32, torch.float64)),
    KernelFamily("ssm2d.backward", Ssm2dWavefrontBwdConfig, "triton_ssm2d_backward.yaml",
                 lambda kw, cfg: plan_ssm2d_wavefront_bwd(**kw, config=cfg), _ssm2d_bwd_example),
    # the PLRNN's adjoint casts all its inputs to fp32: one kernel whatever the model's dtype
    KernelFamily("plrnn.backward", PlrnnSequentialConfig, "triton_plrnn_backward.yaml",
                 lambda kw, cfg: plan_plrnn_backward(**kw, config=cfg), _plrnn_bwd_example,
                 dtypes=(torch.float32,)),
    KernelFamily("dense.backward", DenseSequentialConfig, "triton_dense_backward.yaml",
                 lambda kw, cfg: plan_dense_scan_backward(**kw, config=cfg), _dense_bwd_example),
]}


def get_family(name: str) -> KernelFamily:
    if name not in FAMILIES:
        hint = did_you_mean(name, FAMILIES)
        raise SsmcError(f"unknown Triton kernel family {name!r}"
                        + (f" (did you mean '{hint}'?)" if hint else "")
                        + f"; known: {', '.join(FAMILIES)}")
    return FAMILIES[name]
