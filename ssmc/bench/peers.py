"""Peers: the public kernels people use today, as optional baselines.

mamba-ssm (its CUDA selective scan and its Triton SSD) and flash-linear-attention (its chunked
simple-GLA kernel, which is SSD with a scalar decay per head) are never dependencies: when one is
not installed, or there is no GPU, its Impl carries the reason and the harness records it as
skipped.
"""

from __future__ import annotations

from ssmc.bench.subject import Impl, Unavailable


def unavailable_impl(name: str, reason: str) -> Impl:
    def build(L):
        raise Unavailable(reason)
    return Impl(name, name, build, note=reason)


def _need_gpu(subject, who: str):
    if subject.device != "cuda":
        raise Unavailable(f"{who} runs on a GPU only (target {subject.target.name} is a CPU)")


def mamba_ssm_selective_scan(subject) -> Impl:
    try:
        _need_gpu(subject, "mamba-ssm")
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    except Unavailable as e:
        return unavailable_impl("mamba_ssm", str(e))
    except ImportError as e:
        return unavailable_impl("mamba_ssm", f"mamba-ssm is not installed ({e})")
    return subject._impl("mamba_ssm", "mamba-ssm selective_scan_fn (CUDA)", selective_scan_fn)


def mamba_ssm_ssd(subject) -> Impl:
    try:
        _need_gpu(subject, "mamba-ssm")
        from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined
    except Unavailable as e:
        return unavailable_impl("mamba_ssm", str(e))
    except ImportError as e:
        return unavailable_impl("mamba_ssm", f"mamba-ssm is not installed ({e})")
    chunk = subject.dims["chunk"]
    return subject._impl("mamba_ssm", "mamba-ssm mamba_chunk_scan_combined (Triton)",
                         lambda **k: mamba_chunk_scan_combined(**k, chunk_size=chunk))


def fla_ssd(subject) -> Impl:
    """SSD as fla's chunk_simple_gla: q = C, k = B, v = dt x, log-decay g = dt A per head."""
    try:
        _need_gpu(subject, "flash-linear-attention")
        from fla.ops.simple_gla import chunk_simple_gla
    except Unavailable as e:
        return unavailable_impl("fla", str(e))
    except ImportError as e:
        return unavailable_impl("fla", f"flash-linear-attention is not installed ({e})")
    rep = subject.dims["heads"] // subject.dims["groups"]

    def run(x, dt, A, B, C):
        q = C.repeat_interleave(rep, dim=2)
        k = B.repeat_interleave(rep, dim=2)
        v = x * dt.unsqueeze(-1)
        o, _ = chunk_simple_gla(q, k, v, g=dt * A, scale=1.0)
        return o

    return subject._impl("fla", "fla chunk_simple_gla (Triton)", run)
