"""PLRNN vs a numpy per-trajectory loop, the canonical HRF vs its closed form, causal long
convolution FFT vs direct vs the defining sum, dtypes, gradients and the PLRNN module."""

import math

import numpy as np
import pytest
import torch

from ssmc.semantics.modules_misc import PLRNN
from ssmc.semantics.recurrence import (causal_conv_direct, causal_conv_fft, hrf_double_gamma,
                                       plrnn_observe, plrnn_ref)


def plrnn_params(M, K, dtype=torch.float64):
    return (torch.rand(M, dtype=dtype) * 0.4 + 0.5, torch.randn(M, M, dtype=dtype) * 0.3,
            torch.randn(M, dtype=dtype) * 0.1, torch.randn(M, K, dtype=dtype))


def plrnn_numpy(s, A, W, h0, C, z0):
    """One trajectory at a time, numpy float64, W's diagonal removed explicitly."""
    s, A, W, h0, C, z0 = (np.asarray(t, dtype=np.float64) for t in (s, A, W, h0, C, z0))
    Wo = W - np.diag(np.diag(W))
    out = np.zeros((s.shape[0], s.shape[1], A.shape[0]))
    for r in range(s.shape[0]):
        z = z0[r].copy()
        for t in range(s.shape[1]):
            z = A * z + Wo @ np.maximum(z, 0.0) + h0 + C @ s[r, t]
            out[r, t] = z
    return out


@pytest.mark.parametrize("z0_kind", ["none", "shared", "per_row"])
@pytest.mark.parametrize("L", [1, 7, 50])
def test_plrnn_matches_numpy(L, z0_kind):
    b, M, K = 3, 5, 2
    s = torch.randn(b, L, K, dtype=torch.float64)
    A, W, h0, C = plrnn_params(M, K)
    z0 = {"none": None, "shared": torch.randn(M, dtype=torch.float64),
          "per_row": torch.randn(b, M, dtype=torch.float64)}[z0_kind]
    z0_np = np.zeros((b, M)) if z0 is None else np.broadcast_to(z0.numpy(), (b, M))
    got = plrnn_ref(s, A, W, h0, C, z0)
    want = plrnn_numpy(s.numpy(), A.numpy(), W.numpy(), h0.numpy(), C.numpy(), z0_np)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-12, atol=1e-12)


def test_plrnn_ignores_the_diagonal_of_W():
    s = torch.randn(2, 9, 3, dtype=torch.float64)
    A, W, h0, C = plrnn_params(4, 3)
    W2 = W + torch.diag(torch.randn(4, dtype=torch.float64))
    torch.testing.assert_close(plrnn_ref(s, A, W2, h0, C), plrnn_ref(s, A, W, h0, C))


@pytest.mark.parametrize("tr", [0.5, 2.0, 3.0])
def test_hrf_matches_closed_form(tr):
    """Defaults: gamma(6, 1) - gamma(16, 1) / 6 on t = k tr, 32 s, unit sum (SPM's spm_hrf)."""
    n = int(32 / tr) + 1
    raw = [t ** 5 * math.exp(-t) / math.factorial(5)
           - t ** 15 * math.exp(-t) / math.factorial(15) / 6 for t in (k * tr for k in range(n))]
    want = torch.tensor(raw, dtype=torch.float64) / sum(raw)
    got = hrf_double_gamma(tr, dtype=torch.float64)
    assert got.shape == (n,)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14)


def test_hrf_shape_facts():
    h = hrf_double_gamma(0.1, dtype=torch.float64)
    assert abs(float(h.sum()) - 1) < 1e-12 and h[0] == 0
    assert int(h.argmax()) == 50  # gamma(6, 1) peaks at 5 s
    assert h.min() < 0 and 12 < float(h.argmin()) * 0.1 < 17  # the undershoot
    assert hrf_double_gamma(2.0, length=40).shape == (40,)
    with pytest.raises(ValueError, match="tr"):
        hrf_double_gamma(0.0)
    with pytest.raises(ValueError, match="length"):
        hrf_double_gamma(1.0, length=0)


def conv_by_definition(u, k):
    """y[t, c] = sum_{j <= t} k[c, j] u[t - j, c], as a plain loop over taps."""
    b, L, c = u.shape
    k = k.expand(c, k.shape[-1]) if k.dim() == 1 else k
    y = torch.zeros_like(u)
    for j in range(min(k.shape[1], L)):
        y[:, j:] += k[:, j] * u[:, :L - j]
    return y


@pytest.mark.parametrize("L", [1, 7, 1000, 4097])
def test_hrf_conv_fft_matches_direct(L):
    u = torch.randn(2, L, 3, dtype=torch.float64)
    h = hrf_double_gamma(2.0, dtype=torch.float64)
    y_fft, y_dir = causal_conv_fft(u, h), causal_conv_direct(u, h)
    torch.testing.assert_close(y_fft, y_dir, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(y_dir, conv_by_definition(u, h), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("L,K", [(1, 1), (7, 3), (7, 20), (513, 513), (4097, 4097)])
def test_long_kernel_fft_matches_direct(L, K):
    u = torch.randn(2, L, 3, dtype=torch.float64)
    k = torch.randn(3, K, dtype=torch.float64) / math.sqrt(K)
    torch.testing.assert_close(causal_conv_fft(u, k), causal_conv_direct(u, k),
                               rtol=1e-9, atol=1e-9)
    if L <= 513:
        torch.testing.assert_close(causal_conv_direct(u, k), conv_by_definition(u, k),
                                   rtol=1e-10, atol=1e-10)


def test_conv_is_causal():
    u = torch.randn(1, 30, 2, dtype=torch.float64)
    k = torch.randn(2, 30, dtype=torch.float64)
    u2 = u.clone()
    u2[:, 20:] = 5.0
    for conv in (causal_conv_fft, causal_conv_direct):
        torch.testing.assert_close(conv(u2, k)[:, :20], conv(u, k)[:, :20])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_returns_input_dtype(dtype, tol):
    u = torch.randn(2, 64, 3).to(dtype)
    h = hrf_double_gamma(1.0)
    for conv in (causal_conv_fft, causal_conv_direct):
        y = conv(u, h)
        assert y.dtype == dtype
        torch.testing.assert_close(y.float(), conv(u.float(), h), **tol[dtype])
    A, W, h0, C = (p.float() for p in plrnn_params(4, 3))
    s = torch.randn(2, 10, 3).to(dtype)
    z = plrnn_ref(s, A, W, h0, C)
    assert z.dtype == dtype
    torch.testing.assert_close(z.float(), plrnn_ref(s.float(), A, W, h0, C), **tol[dtype])


@pytest.mark.parametrize("method", ["fft", "direct"])
def test_observation(method):
    z = torch.randn(2, 40, 4, dtype=torch.float64)
    h = hrf_double_gamma(2.0, dtype=torch.float64)
    B = torch.randn(3, 4, dtype=torch.float64)
    want = torch.einsum("blm,pm->blp", conv_by_definition(z, h), B)
    torch.testing.assert_close(plrnn_observe(z, h, B, method), want)
    with pytest.raises(ValueError, match="method"):
        plrnn_observe(z, h, B, "winograd")


def test_gradcheck_float64():
    s = torch.randn(2, 4, 2, dtype=torch.float64, requires_grad=True)
    params = [p.requires_grad_() for p in plrnn_params(3, 2)]
    assert torch.autograd.gradcheck(lambda s, *p: plrnn_ref(s, *p), (s, *params), fast_mode=True)
    u = torch.randn(1, 9, 2, dtype=torch.float64, requires_grad=True)
    k = torch.randn(2, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(causal_conv_fft, (u, k), fast_mode=True)
    assert torch.autograd.gradcheck(causal_conv_direct, (u, k), fast_mode=True)


def test_module_backward_and_initial_state():
    m = PLRNN(5, 3)
    s = torch.randn(2, 12, 3)
    z0 = torch.randn(2, 5, requires_grad=True)
    z = m(s, z0)
    assert z.shape == (2, 12, 5)
    (z * torch.randn_like(z)).sum().backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
    assert torch.diagonal(m.W.grad).abs().max() == 0  # the diagonal is masked out
    assert z0.grad is not None
    torch.testing.assert_close(m(s)[:, :1], plrnn_ref(s[:, :1], m.A, m.W, m.h0, m.C))


def test_module_on_meta_and_validation():
    m = PLRNN(6, 4, device="meta")
    assert all(p.is_meta for p in m.parameters())
    assert sum(p.numel() for p in m.parameters()) == 6 + 36 + 6 + 24
    with pytest.raises(ValueError, match="d_latent"):
        PLRNN(0, 3)
    with pytest.raises(ValueError, match="d_input"):
        PLRNN(3, -1)
