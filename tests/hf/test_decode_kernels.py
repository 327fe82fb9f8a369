"""The TVM decode kernels (ssmc.codegen.tvm.decode) against plain torch: causal conv1d over a
sequence and its one-token step (conv state updated in place), the selective-scan step for
Mamba-1 and Mamba-2 (state updated in place), and the channels-last sequence scan reading
strided inputs (Mamba-1, and SSD with per-head dt / A / D).  No transformers needed."""

import pytest
import torch
import torch.nn.functional as F

from ssmc.semantics.selective import selective_scan_ref, ssd_ref

dk = pytest.importorskip("ssmc.codegen.tvm.decode", reason="TVM is not importable here")

TOL = dict(rtol=6e-4, atol=2e-3)


def _conv_ref(x, w, bias, init=None):
    """x (b, L, c); w (c, 1, k); init (b, c, k): the previous k inputs."""
    b, L, c = x.shape
    k = w.shape[-1]
    xt = x.transpose(1, 2)
    if init is not None:
        y = F.conv1d(torch.cat([init, xt], -1), w, bias, groups=c)[..., -L:]
    else:
        y = F.conv1d(xt, w, bias, padding=k - 1, groups=c)[..., :L]
    return F.silu(y).transpose(1, 2)


@pytest.mark.parametrize("c,k,L,bias", [(64, 4, 37, True), (40, 3, 5, False), (24, 4, 2, True)])
def test_conv_sequence(c, k, L, bias):
    xz = torch.randn(2, L, 2 * c)
    x = xz[..., :c]  # a strided view, read in place
    w = torch.randn(c, 1, k)
    bb = torch.randn(c) if bias else None
    torch.testing.assert_close(dk.causal_conv1d(x, w, bb, "silu"), _conv_ref(x, w, bb), **TOL)
    init = torch.randn(2, c, k)
    torch.testing.assert_close(dk.causal_conv1d(x, w, bb, "silu", init), _conv_ref(x, w, bb, init),
                               **TOL)


def test_conv_step_updates_state_in_place():
    c, k = 48, 4
    w, bias = torch.randn(c, 1, k), torch.randn(c)
    state = torch.randn(2, c, k)
    xs = torch.randn(2, 6, c)
    want_state = state.clone()
    for t in range(6):  # token by token == the sequence conv started from the same state
        y = dk.causal_conv1d_update(xs[:, t], state, w, bias, "silu")
        want = _conv_ref(xs[:, t:t + 1], w, bias, want_state)[:, 0]
        want_state = torch.cat([want_state, xs[:, t, :, None]], -1)[..., -k:]
        torch.testing.assert_close(y, want, **TOL)
        torch.testing.assert_close(state, want_state, rtol=0, atol=0)


def test_conv_step_rejects_a_bad_state():
    with pytest.raises(ValueError, match="conv_state"):
        dk.causal_conv1d_update(torch.randn(1, 8), torch.randn(1, 8, 4).double(),
                                torch.randn(8, 1, 4), None)


@pytest.mark.parametrize("d,N,g", [(64, 16, 1), (48, 8, 2)])
def test_mamba1_step_matches_the_scan(d, N, g):
    b, R = 2, 5
    A = -torch.rand(d, N) - 0.5
    D, db = torch.randn(d), torch.randn(d)
    h = torch.randn(b, d, N)
    h0 = h.clone()
    x, dt = torch.randn(b, d), torch.randn(b, d)
    xdbl = torch.randn(b, R + 2 * g * N)  # B and C are strided column slices
    B = xdbl[:, R:R + g * N].view(b, g, N)
    C = xdbl[:, R + g * N:].view(b, g, N)
    z = torch.randn(b, 2 * d)[:, d:]
    y = dk.selective_state_update(h, x, dt, dk.A2_of(A), B, C, D, z, db, True)
    yr, hr = selective_scan_ref(x[..., None], dt[..., None], A, B[..., None], C[..., None], D=D,
                                z=z[..., None], delta_bias=db, delta_softplus=True,
                                return_last_state=True, initial_state=h0)
    torch.testing.assert_close(y, yr[..., 0], **TOL)
    torch.testing.assert_close(h, hr, **TOL)


def test_ssd_step_and_sequence():
    b, L, H, P, g, N = 2, 21, 4, 16, 2, 8
    d = H * P
    x, dt = torch.randn(b, L, d), torch.randn(b, L, H)
    A = -torch.rand(H) - 0.5
    B, C = torch.randn(b, L, g, N), torch.randn(b, L, g, N)
    D, dtb = torch.randn(H), torch.randn(H)
    h0 = torch.randn(b, H, P, N)
    y, last = dk.selective_scan_seq(x, dt, dk.A2_of(A), B, C, D, None, dtb, True, head_dim=P,
                                    initial_state=h0, return_last_state=True)
    yr, hr = ssd_ref(x.view(b, L, H, P), dt, A, B, C, D=D, dt_bias=dtb, dt_softplus=True,
                     initial_states=h0, return_final_states=True)
    torch.testing.assert_close(y, yr.reshape(b, L, d), **TOL)
    torch.testing.assert_close(last, hr.reshape(b, d, N), **TOL)
    # token by token with the state in place gives the same
    state = h0.clone()
    for t in range(L):
        yt = dk.selective_state_update(state.view(b, d, N), x[:, t], dt[:, t], dk.A2_of(A),
                                       B[:, t], C[:, t], D, None, dtb, True, head_dim=P)
        torch.testing.assert_close(yt, yr[:, t].reshape(b, d), **TOL)
    torch.testing.assert_close(state, hr, **TOL)


def test_mamba1_sequence_reads_strided_inputs():
    b, L, d, N, R = 2, 33, 32, 16, 4
    x = torch.randn(b, L, d)
    xz = torch.randn(b, L, 2 * d)
    z = xz[..., d:]
    dt = torch.randn(b, L, d) * 0.5
    xdbl = torch.randn(b, L, R + 2 * N)
    B, C = xdbl[..., R:R + N].unsqueeze(2), xdbl[..., R + N:].unsqueeze(2)
    A = -torch.rand(d, N) - 0.5
    D, db = torch.randn(d), torch.randn(d)
    y, last = dk.selective_scan_seq(x, dt, dk.A2_of(A), B, C, D, z, db, True, head_dim=1,
                                    return_last_state=True)
    yr, hr = selective_scan_ref(x.transpose(1, 2), dt.transpose(1, 2), A,
                                B[:, :, 0].transpose(1, 2), C[:, :, 0].transpose(1, 2), D=D,
                                z=z.transpose(1, 2), delta_bias=db, delta_softplus=True,
                                return_last_state=True)
    torch.testing.assert_close(y, yr.transpose(1, 2), **TOL)
    torch.testing.assert_close(last, hr, **TOL)


def test_step_signature_checks():
    from ssmc.codegen.tvm.selective_step_tir import StepSignature

    with pytest.raises(ValueError, match="head_dim"):
        StepSignature(d=30, N=4, head_dim=4)
    with pytest.raises(ValueError, match="groups"):
        StepSignature(d=32, N=4, groups=3)


@pytest.mark.parametrize("K,N,bias", [(256, 1024, False), (512, 48, True), (16, 512, False),
                                      (7, 5, True), (1, 3, False), (33, 1027, True)])
def test_gemv_is_linear_of_one_row(K, N, bias):
    """The decode step's matrix-vector kernel: tails in K (not a multiple of the vector width)
    and in N (not a multiple of the interleaved rows) included."""
    w = torch.randn(N, K)
    b = torch.randn(N) if bias else None
    x = torch.randn(1, K)
    torch.testing.assert_close(dk.gemv(x, w, b), F.linear(x, w, b), **TOL)
    torch.testing.assert_close(dk.gemv(x[0], w, b), F.linear(x[0], w, b), **TOL)


@pytest.mark.parametrize("x,w,b,what", [
    (torch.randn(2, 8), torch.randn(4, 8), None, "x must be"),
    (torch.randn(1, 7), torch.randn(4, 8), None, "x must be"),
    (torch.randn(8), torch.randn(4, 8, 1), None, "weight must be 2-D"),
    (torch.randn(8), torch.randn(4, 8), torch.randn(5), "bias must be"),
])
def test_gemv_bad_shapes_name_the_argument(x, w, b, what):
    with pytest.raises(ValueError, match=what):
        dk.gemv(x, w, b)
