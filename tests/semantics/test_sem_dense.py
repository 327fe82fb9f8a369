"""Dense / block-diagonal input-dependent transitions: the sequential matvec scan against the
associative scan with the matrix combine, the block structure against a dense embedding,
the transitions against their formulas, and the module."""

import pytest
import torch

from ssmc.semantics.dense import dense_scan_assoc, dense_scan_ref, dense_ssm, dense_transitions
from ssmc.semantics.modules_ssm import DenseSSM, SelectiveSSM

b, K = 2, 3


def transitions(L, nb, bs, scale=0.3, dtype=torch.float32):
    """Transitions near the identity (spectral radius about 1) and inputs."""
    A = torch.eye(bs, dtype=dtype) + scale / bs ** 0.5 * torch.randn(b, L, nb, bs, bs, dtype=dtype)
    return A * 0.9, torch.randn(b, L, nb, bs, dtype=dtype)


@pytest.mark.parametrize("nb, bs", [(1, 4), (2, 3), (4, 1)], ids=["dense", "blocks", "diag"])
@pytest.mark.parametrize("L", [0, 1, 7, 1000])
def test_sequential_matches_associative(L, nb, bs, tol):
    A, u = transitions(L, nb, bs)
    h0 = torch.randn(b, nb, bs)
    h1, s1 = dense_scan_ref(A, u, h0, return_final_state=True)
    h2, s2 = dense_scan_assoc(A, u, h0, return_final_state=True)
    torch.testing.assert_close(h2, h1, **tol[torch.float32])
    torch.testing.assert_close(s2, s1, **tol[torch.float32])


def test_block_diagonal_equals_dense_embedding():
    # Blocks scanned separately = one dense scan with the blocks placed on the diagonal.
    L, nb, bs = 9, 3, 2
    A, u = transitions(L, nb, bs, dtype=torch.float64)
    dense = torch.zeros(b, L, 1, nb * bs, nb * bs, dtype=torch.float64)
    for i in range(nb):
        dense[:, :, 0, i * bs:(i + 1) * bs, i * bs:(i + 1) * bs] = A[:, :, i]
    blocked = dense_scan_ref(A, u)
    full = dense_scan_ref(dense, u.reshape(b, L, 1, nb * bs))
    torch.testing.assert_close(full.reshape(b, L, nb, bs), blocked)


def test_transitions_formulas():
    x = torch.randn(b, 4, K, dtype=torch.float64)
    A_k = 0.2 * torch.randn(K, 2, 3, 3, dtype=torch.float64)
    A_0 = 0.1 * torch.randn(2, 3, 3, dtype=torch.float64)
    lin = dense_transitions(x, A_k, "linear", A_0)
    ex = dense_transitions(x, A_k, "expm", A_0)
    for bi in range(b):
        for t in range(4):
            for blk in range(2):
                M = A_0[blk] + sum(x[bi, t, k] * A_k[k, blk] for k in range(K))
                torch.testing.assert_close(lin[bi, t, blk], torch.eye(3, dtype=torch.float64) + M)
                # expm by its Taylor series (|M| is small: 30 terms are exact to fp64)
                term, series = torch.eye(3, dtype=torch.float64), torch.zeros(3, 3,
                                                                            dtype=torch.float64)
                for j in range(30):
                    series = series + term
                    term = term @ M / (j + 1)
                torch.testing.assert_close(ex[bi, t, blk], series)
    with pytest.raises(ValueError, match="mode"):
        dense_transitions(x, A_k, "cayley")


def test_elementwise_gating_is_the_diagonal_case(tol):
    # bs = 1 blocks: h_t = a_t h_{t-1} + u_t per state, a plain linear recurrence.
    L, N = 15, 4
    A, u = transitions(L, N, 1)
    h = dense_scan_ref(A, u)[..., 0]
    state, want = torch.zeros(b, N), []
    for t in range(L):
        state = A[:, t, :, 0, 0] * state + u[:, t, :, 0]
        want.append(state)
    torch.testing.assert_close(h, torch.stack(want, 1), **tol[torch.float32])


@pytest.mark.parametrize("mode", ["linear", "expm"])
def test_dense_ssm_sequential_matches_assoc(mode, tol):
    d, N, L = 4, 6, 50
    x = torch.randn(b, L, d)
    A_k = 0.1 / (d * 3) ** 0.5 * torch.randn(d, 2, 3, 3)
    A_0 = -0.1 * torch.eye(3).expand(2, 3, 3)
    W_B, W_C, D = torch.randn(N, d), torch.randn(d, N), torch.randn(d)
    h0 = torch.randn(b, N)
    y1, s1 = dense_ssm(x, A_k, W_B, W_C, D, mode, "sequential", h0, True, A_0=A_0)
    y2, s2 = dense_ssm(x, A_k, W_B, W_C, D, mode, "assoc", h0, True, A_0=A_0)
    torch.testing.assert_close(y2, y1, **tol[torch.float32])
    torch.testing.assert_close(s2, s1, **tol[torch.float32])
    with pytest.raises(ValueError, match="scan"):
        dense_ssm(x, A_k, W_B, W_C, scan="chunked")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision(dtype, tol):
    A, u = transitions(30, 2, 3)
    got = dense_scan_assoc(A.to(dtype), u.to(dtype))
    assert got.dtype == dtype
    want = dense_scan_ref(A.to(dtype).float(), u.to(dtype).float())
    torch.testing.assert_close(got.float(), want, **tol[dtype])


def test_gradcheck():
    A, u = transitions(4, 2, 2, dtype=torch.float64)
    h0 = torch.randn(b, 2, 2, dtype=torch.float64)
    leaves = [t.clone().requires_grad_() for t in (A, u, h0)]
    assert torch.autograd.gradcheck(lambda A, u, h: dense_scan_assoc(A, u, h), leaves,
                                    fast_mode=True)
    assert torch.autograd.gradcheck(lambda A, u, h: dense_scan_ref(A, u, h), leaves,
                                    fast_mode=True)


# --- the module -------------------------------------------------------------------------------

MODULE_CASES = {
    "dense": dict(),
    "blocks": dict(block_size=2),
    "expm": dict(transition="expm", block_size=3),
    "assoc-noD": dict(scan="assoc", D=False),
}


@pytest.mark.parametrize("case", MODULE_CASES)
def test_module_matches_other_scan(case, tol):
    m = SelectiveSSM(5, 6, variant="dense", **MODULE_CASES[case])
    assert isinstance(m, DenseSSM)
    x = torch.randn(b, 40, 5)
    h0 = torch.randn(b, 6)
    y, s = m(x, initial_state=h0, return_final_state=True)
    other = "assoc" if m.scan == "sequential" else "sequential"
    want, ws = dense_ssm(x, m.A_k, m.B_proj, m.C_proj, m.D, m.transition, other, h0, True,
                         A_0=m.A_0)
    torch.testing.assert_close(y, want, **tol[torch.float32])
    torch.testing.assert_close(s, ws, **tol[torch.float32])


def test_module_is_stable_on_long_sequences():
    m = SelectiveSSM(8, 8, variant="dense", block_size=4)
    y = m(torch.randn(1, 1000, 8))
    assert torch.isfinite(y).all() and y.abs().max() < 100


def test_module_params_and_meta():
    m = SelectiveSSM(5, 6, variant="dense", block_size=3)
    assert {k: tuple(v.shape) for k, v in m.named_parameters()} == {
        "A_0": (2, 3, 3), "A_k": (5, 2, 3, 3), "B_proj": (6, 5), "C_proj": (5, 6), "D": (5,)}
    torch.testing.assert_close(m.A_0, -0.1 * torch.eye(3).expand(2, 3, 3))
    meta = SelectiveSSM(5, 6, variant="dense", device="meta")
    assert all(p.is_meta for p in meta.parameters())
    assert sum(p.numel() for p in meta.parameters()) == 36 + 5 * 36 + 30 + 30 + 5


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_module_low_precision(dtype, tol):
    m = SelectiveSSM(5, 6, variant="dense", block_size=2)
    x = torch.randn(b, 20, 5).to(dtype)
    y = m(x)
    assert y.dtype == dtype
    torch.testing.assert_close(y.float(), m(x.float()), **tol[dtype])


@pytest.mark.parametrize("case", MODULE_CASES)
def test_module_backward_reaches_every_parameter(case):
    m = SelectiveSSM(5, 6, variant="dense", **MODULE_CASES[case])
    m(torch.randn(b, 7, 5)).square().sum().backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("kwargs, name", [
    (dict(block_size=4), "block_size"),
    (dict(block_size=0), "block_size"),
    (dict(transition="cayley"), "transition"),
    (dict(scan="chunked"), "scan"),
])
def test_module_validation(kwargs, name):
    with pytest.raises(ValueError, match=name):
        SelectiveSSM(5, 6, variant="dense", **kwargs)
    with pytest.raises(ValueError, match="initial_state"):
        SelectiveSSM(5, 6, variant="dense")(torch.randn(b, 3, 5), initial_state=torch.zeros(b, 5))
