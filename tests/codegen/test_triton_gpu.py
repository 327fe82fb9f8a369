"""The Triton kernels for real on a CUDA/ROCm device, at realistic sizes (L = 1000 and 4097:
several chunks/blocks and a ragged tail; 16384: the long sequences the cost model sends to the
parallel algorithms).  Run with `SSMC_GPU_TESTS=1 pytest -m gpu`: the
interpreter would take hours at these sizes, so these tests skip under TRITON_INTERPRET=1."""

import math

import pytest
import torch

from ssmc.codegen.triton.common import interpreting

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA/ROCm device"),
    pytest.mark.skipif(interpreting(), reason="TRITON_INTERPRET=1: set SSMC_GPU_TESTS=1"),
]

DEV = "cuda"
LENGTHS = [1000, 4097, 16384]
DTYPES = [torch.float32, torch.bfloat16]
DTYPE_IDS = ["fp32", "bf16"]


def check(out, ref, tol, dtype=None):
    assert not torch.isnan(out.float()).any()
    torch.testing.assert_close(out, ref, **tol[dtype or out.dtype])


@pytest.mark.parametrize("algorithm", ["sequential", "associative", "chunked"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("L", LENGTHS)
def test_selective_scan(algorithm, dtype, L, tol):
    from ssmc.codegen.triton.selective_scan import selective_scan
    from ssmc.semantics.selective import selective_scan_ref

    b, d, N, g = 2, 256, 16, 2
    kw = dict(
        u=torch.randn(b, d, L, device=DEV).to(dtype),
        delta=(torch.randn(b, d, L, device=DEV) * 0.5 - 1.0).to(dtype),
        A=-torch.arange(1, N + 1, device=DEV, dtype=torch.float32).repeat(d, 1),
        B=torch.randn(b, g, N, L, device=DEV).to(dtype),
        C=torch.randn(b, g, N, L, device=DEV).to(dtype),
        D=torch.randn(d, device=DEV), z=torch.randn(b, d, L, device=DEV).to(dtype),
        delta_bias=torch.randn(d, device=DEV) * 0.1,
        initial_state=torch.randn(b, d, N, device=DEV),
        delta_softplus=True, return_last_state=True)
    out, last = selective_scan(**kw, algorithm=algorithm)
    ref, ref_last = selective_scan_ref(**kw)
    check(out, ref, tol)
    check(last, ref_last, tol, dtype)


@pytest.mark.parametrize("algorithm", ["sequential", "associative", "chunked"])
def test_selective_scan_complex(algorithm, tol):
    from ssmc.codegen.triton.selective_scan import selective_scan
    from ssmc.semantics.selective import selective_scan_ref

    b, d, L, N = 2, 128, 4097, 8
    A = torch.complex(-torch.rand(d, N, device=DEV) - 0.5, torch.randn(d, N, device=DEV))
    kw = dict(u=torch.randn(b, d, L, device=DEV),
              delta=torch.randn(b, d, L, device=DEV) * 0.5 - 1.0, A=A,
              B=torch.randn(b, 1, N, L, device=DEV, dtype=torch.complex64),
              C=torch.randn(b, 1, N, L, device=DEV, dtype=torch.complex64),
              D=torch.randn(d, device=DEV), delta_softplus=True, return_last_state=True)
    out, last = selective_scan(**kw, algorithm=algorithm)
    ref, ref_last = selective_scan_ref(**kw)
    check(out, ref, tol)
    torch.testing.assert_close(last, ref_last, **tol[torch.complex64])


@pytest.mark.parametrize("algorithm", ["sequential", "associative", "chunked"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_selective_scan_varlen(algorithm, dtype, tol):
    """A packed row (cu_seqlens) of long, one-step and empty sequences, per-sequence initial and
    final states."""
    from ssmc.codegen.triton.selective_scan import selective_scan
    from ssmc.semantics.selective import selective_scan_ref

    lengths = [1, 1000, 0, 3000, 97]
    d, N, L = 256, 16, sum(lengths)
    cu = torch.tensor([0] + torch.tensor(lengths).cumsum(0).tolist(), device=DEV,
                      dtype=torch.int32)
    kw = dict(
        u=torch.randn(1, d, L, device=DEV).to(dtype),
        delta=(torch.randn(1, d, L, device=DEV) * 0.5 - 1.0).to(dtype),
        A=-torch.arange(1, N + 1, device=DEV, dtype=torch.float32).repeat(d, 1),
        B=torch.randn(1, 2, N, L, device=DEV).to(dtype),
        C=torch.randn(1, 2, N, L, device=DEV).to(dtype),
        D=torch.randn(d, device=DEV), z=torch.randn(1, d, L, device=DEV).to(dtype),
        delta_bias=torch.randn(d, device=DEV) * 0.1,
        initial_state=torch.randn(len(lengths), d, N, device=DEV),
        delta_softplus=True, return_last_state=True, cu_seqlens=cu)
    out, last = selective_scan(**kw, algorithm=algorithm)
    ref, ref_last = selective_scan_ref(**kw)
    check(out, ref, tol)
    check(last, ref_last, tol, dtype)


@pytest.mark.parametrize("dtype", DTYPES + [torch.float16], ids=DTYPE_IDS + ["fp16"])
@pytest.mark.parametrize("L", LENGTHS)
def test_ssd(dtype, L, tol):
    from ssmc.codegen.triton.ssd import ssd_chunked
    from ssmc.semantics.selective import ssd_ref

    b, h, p, g, n = 2, 8, 64, 2, 64
    seq_idx = torch.zeros(b, L, dtype=torch.int32, device=DEV)
    seq_idx[:, L // 3:] = 1
    seq_idx[:, 2 * L // 3:] = 2
    kw = dict(x=torch.randn(b, L, h, p, device=DEV).to(dtype),
              dt=(torch.randn(b, L, h, device=DEV) * 0.5 - 1.0).to(dtype),
              A=-(torch.rand(h, device=DEV) + 0.5),
              B=torch.randn(b, L, g, n, device=DEV).to(dtype),
              C=torch.randn(b, L, g, n, device=DEV).to(dtype),
              D=torch.randn(h, device=DEV), z=torch.randn(b, L, h, p, device=DEV).to(dtype),
              dt_bias=torch.randn(h, device=DEV) * 0.1,
              initial_states=torch.randn(b, h, p, n, device=DEV), seq_idx=seq_idx,
              dt_softplus=True, dt_limit=(0.0, math.inf), return_final_states=True)
    out, final = ssd_chunked(**kw)
    ref, ref_final = ssd_ref(**kw)
    check(out, ref, tol)
    check(final, ref_final, tol, dtype)


def _s4d_params(d, N):
    from ssmc.semantics.diagonal import discretize_zoh
    from ssmc.semantics.init import complex_normal, s4d_init

    A = s4d_init("lin", N).to(torch.complex64).expand(d, N).to(DEV)
    dt = torch.exp(torch.empty(d, device=DEV).uniform_(-6.9, -2.3))
    Abar, Bbar = discretize_zoh(A, torch.ones(d, N, dtype=torch.complex64, device=DEV), dt)
    return Abar, Bbar, complex_normal((d, N)).to(DEV)


@pytest.mark.parametrize("L", LENGTHS)
def test_s4d_recurrent(L, tol):
    from ssmc.codegen.triton.s4d import s4d_recurrent
    from ssmc.semantics.diagonal import s4d_recurrence

    Abar, Bbar, C = _s4d_params(128, 32)
    u, D = torch.randn(2, 128, L, device=DEV), torch.randn(128, device=DEV)
    y, h = s4d_recurrent(u, Abar, Bbar, C, D, return_final_state=True)
    ry, rh = s4d_recurrence(u, Abar, Bbar, C, D, return_final_state=True)
    check(y, ry, tol)
    torch.testing.assert_close(h, rh, **tol[torch.complex64])


@pytest.mark.parametrize("L", LENGTHS)
def test_s4d_vandermonde_and_conv(L, tol):
    from ssmc.codegen.triton.s4d import s4d_conv, s4d_kernel_vandermonde
    from ssmc.semantics.diagonal import s4d_recurrence

    Abar, Bbar, C = _s4d_params(128, 32)
    K = s4d_kernel_vandermonde(Abar, Bbar, C, L)
    # truth in float64: K[l] = 2 Re sum_n C_n Bbar_n Abar_n^l
    ell = torch.arange(L, device=DEV, dtype=torch.float64)
    CB = (C * Bbar).to(torch.complex128)
    truth = 2 * torch.einsum("dn,dnl->dl", CB,
                             torch.exp(torch.log(Abar.to(torch.complex128))[..., None]
                                       * ell)).real
    check(K.double(), truth, tol, torch.float32)
    u, D = torch.randn(2, 128, L, device=DEV), torch.randn(128, device=DEV)
    check(s4d_conv(u, Abar, Bbar, C, D), s4d_recurrence(u, Abar, Bbar, C, D), tol)
