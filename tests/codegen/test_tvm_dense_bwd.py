"""The TVM backward of the dense / block-diagonal scan (ssmc.codegen.tvm.dense_scan_bwd): fp32
kernel gradients of every input against the fp64 autograd of the oracle
(ssmc.semantics.dense.dense_scan_ref), and the compiled lcde model training through it."""

from __future__ import annotations

import pytest
import torch

import ssmc
from ssmc.codegen.composite.dense import dense_ssm_fast
from ssmc.codegen.tvm import dense_scan_bwd
from ssmc.codegen.tvm.dense_scan import dense_scan
from ssmc.paths import zoo_dir
from ssmc.semantics.dense import dense_scan_ref, dense_ssm
from ssmc.semantics.model import build_reference
from ssmc.semantics.modules_ssm import DenseSSM

F64 = torch.float64


def _close(got, want, tol, name):
    """DESIGN.md's fp32 tolerance; the absolute floor scales with the gradient's size (sums of
    up to b * L terms: dA_k, dA0)."""
    scale = max(1.0, want.abs().max().item() / 10)
    torch.testing.assert_close(got.to(F64), want, rtol=tol[torch.float32]["rtol"],
                               atol=tol[torch.float32]["atol"] * scale, msg=name)


def _problem(b, L, K, nb, bs, seed):
    g = torch.Generator().manual_seed(seed)
    N = nb * bs
    x = torch.randn(b, L, K, generator=g, dtype=F64)
    A_k = torch.randn(K, nb, bs, bs, generator=g, dtype=F64) * 0.3 / (K * bs) ** 0.5
    # near-identity blocks (the lcde's I + A_0): gradients neither vanish nor blow up over L
    A0 = 0.95 * torch.eye(bs, dtype=F64).expand(nb, bs, bs) \
        + 0.02 * torch.randn(nb, bs, bs, generator=g, dtype=F64)
    u = torch.randn(b, L, N, generator=g, dtype=F64)
    h0 = torch.randn(b, N, generator=g, dtype=F64)
    gh = torch.randn(b, L, N, generator=g, dtype=F64)
    return x, A_k, A0, u, h0, gh


def _oracle_grads(x, A_k, A0, u, h0, gh, given):
    b, L, N = u.shape
    nb, bs = A0.shape[:2]
    leaves = [t.clone().requires_grad_() for t in (u, x, A_k, A0)]
    if h0 is not None:
        leaves.append(h0.clone().requires_grad_())
    u_, x_, A_k_, A0_ = leaves[:4]
    A = torch.einsum("blk,knij->blnij", x_, A_k_) + A0_
    if given:  # the per-step transitions are the leaf
        A = A.detach().requires_grad_()
        leaves = [leaves[0], A] + leaves[4:]
    h = dense_scan_ref(A, u_.reshape(b, L, nb, bs),
                       None if h0 is None else leaves[-1].reshape(b, nb, bs))
    return leaves, torch.autograd.grad((h.reshape(b, L, N) * gh).sum(), leaves)


def _kernel_grads(leaves64, gh, given, has_h0):
    leaves = [t.detach().float().requires_grad_() for t in leaves64]
    h0 = leaves[-1] if has_h0 else None
    if given:
        h = dense_scan(leaves[0], A=leaves[1], initial_state=h0)
    else:
        h = dense_scan(leaves[0], x=leaves[1], A_k=leaves[2], A0=leaves[3], initial_state=h0)
    return torch.autograd.grad((h * gh.float()).sum(), leaves)


def _check(tol, b, L, K, nb, bs, has_h0, given, seed=0):
    x, A_k, A0, u, h0, gh = _problem(b, L, K, nb, bs, seed)
    leaves, want = _oracle_grads(x, A_k, A0, u, h0 if has_h0 else None, gh, given)
    got = _kernel_grads(leaves, gh, given, has_h0)
    names = ["u", "A"] if given else ["u", "x", "A_k", "A0"]
    names += ["initial_state"] if has_h0 else []
    for name, a, w in zip(names, got, want):
        assert a.dtype == torch.float32 and a.shape == w.shape, name
        assert torch.isfinite(a).all(), name
        _close(a, w, tol, f"{name} (b{b} L{L} K{K} nb{nb} bs{bs} h0={has_h0} given={given})")


@pytest.mark.parametrize("given", [False, True], ids=["built", "given"])
@pytest.mark.parametrize("has_h0", [False, True], ids=["zero-init", "h0"])
@pytest.mark.parametrize("L", [1, 7, 1000])
@pytest.mark.parametrize("K,nb,bs", [(5, 2, 3), (8, 4, 4), (3, 6, 1)],
                         ids=["K5-nb2-bs3", "K8-nb4-bs4", "K3-nb6-bs1"])
def test_kernel_gradients_match_oracle(tol, K, nb, bs, L, has_h0, given):
    _check(tol, 2, L, K, nb, bs, has_h0, given, seed=L + K)


@pytest.mark.parametrize("L", [1, 7, 300])
@pytest.mark.parametrize("given", [False, True], ids=["built", "given"])
def test_large_block(tol, L, given):
    """One dense 16 x 16 block (the unrolled mat-vec at its widest) and K not a multiple of the
    vector width (scalar k statements) nor of the build's group of 16."""
    _check(tol, 2, L, 37, 1, 16, True, given, seed=L)


def test_long_sequence(tol):
    """L = 4097 (one past a power of two), tiny batch and channels: accumulation over t."""
    _check(tol, 1, 4097, 2, 2, 2, True, False, seed=1)


@pytest.mark.slow
@pytest.mark.parametrize("given", [False, True], ids=["built", "given"])
def test_long_sequence_lcde_sizes(tol, given):
    _check(tol, 2, 4097, 32, 4, 4, True, given, seed=2)


def test_backward_is_deterministic_and_only_the_kernel_runs(monkeypatch):
    """Twice the same gradients, bit for bit (the parameter sums are serial in t per row, then
    a fixed-order sum over rows); one kernel call per backward; no call without gradients."""
    x, A_k, A0, u, h0, gh = (t.float() for t in _problem(3, 50, 8, 4, 4, 5))
    calls = []
    real = dense_scan_bwd.run_backward
    monkeypatch.setattr(dense_scan_bwd, "run_backward",
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    leaves = [t.requires_grad_() for t in (u, x, A_k, A0, h0)]

    def grads():
        h = dense_scan(u, x=x, A_k=A_k, A0=A0, initial_state=h0)
        return torch.autograd.grad((h * gh).sum(), leaves)

    g1, g2 = grads(), grads()
    assert calls == [1, 1]
    for a, b in zip(g1, g2):
        assert torch.equal(a, b)
    with torch.no_grad():
        dense_scan(u, x=x, A_k=A_k, A0=A0, initial_state=h0)
    assert calls == [1, 1]


def test_only_some_inputs_require_grad():
    x, A_k, A0, u, _, gh = (t.float() for t in _problem(2, 9, 3, 2, 2, 6))
    A_k.requires_grad_()
    h = dense_scan(u, x=x, A_k=A_k, A0=A0)
    (g,) = torch.autograd.grad((h * gh).sum(), [A_k])
    assert g.shape == A_k.shape and torch.isfinite(g).all()


def test_empty_sequence_gives_zero_gradients():
    u = torch.zeros(2, 0, 4, requires_grad=True)
    A_k = torch.randn(3, 2, 2, 2, requires_grad=True)
    h = dense_scan(u, x=torch.zeros(2, 0, 3), A_k=A_k, A0=torch.eye(2).expand(2, 2, 2))
    h.sum().backward()
    assert torch.equal(A_k.grad, torch.zeros_like(A_k))


@pytest.mark.parametrize("mode", ["linear", "expm"])
def test_layer_gradients_match_oracle(tol, mode):
    """dense_ssm_fast "sequential" (the projections and A_k's construction differentiated by
    autograd around the kernel pair; expm: the transitions given) against the fp64 oracle."""
    torch.manual_seed(4)
    m = DenseSSM(6, 8, block_size=4, transition=mode).double()
    x = torch.randn(2, 40, 6, dtype=F64)
    h0 = torch.randn(2, 8, dtype=F64)
    params = [m.A_k, m.B_proj, m.C_proj, m.D, m.A_0]

    def grads(fn, dtype):
        leaves = [p.detach().to(dtype).requires_grad_() for p in [x, h0, *params]]
        xx, hh, A_k, W_B, W_C, D, A_0 = leaves
        y, last = fn(xx, A_k, W_B, W_C, D, mode, initial_state=hh, return_final_state=True,
                     A_0=A_0)
        return torch.autograd.grad(y.square().mean() + last.sum(), leaves)

    want = grads(dense_ssm, F64)
    got = grads(lambda *a, **k: dense_ssm_fast(*a, algorithm="sequential", **k), torch.float32)
    for name, a, w in zip(["x", "h0", "A_k", "W_B", "W_C", "D", "A_0"], got, want):
        _close(a, w, tol, name)


# ------------------------------------------------------------------- ssmc.compile(lcde)
@pytest.fixture(scope="module")
def lcde():
    torch.manual_seed(7)
    model = ssmc.compile(zoo_dir() / "lcde.yaml", "cpu", seqlen=256).train()
    ref = build_reference(model.source_graph).double().train()
    ref.load_state_dict(model.state_dict())
    return model, ref


@pytest.mark.parametrize("L", [1, 2, 300])
def test_lcde_training_gradients_come_from_the_kernel(lcde, tol, monkeypatch, L):
    """A training step of the compiled lcde runs the TVM adjoint kernel (not the associative
    torch scan; at L = 1, where that scan is cheaper, the other way round: executors'
    _tvm_dense_trains) and every parameter's gradient matches the fp64 reference model's."""
    from ssmc.codegen.composite import dense as composite

    model, ref = lcde
    calls = []
    real = dense_scan_bwd.run_backward
    monkeypatch.setattr(dense_scan_bwd, "run_backward",
                        lambda *a, **k: calls.append("kernel") or real(*a, **k))
    real_assoc = composite.assoc_scan
    monkeypatch.setattr(composite, "assoc_scan",
                        lambda *a, **k: calls.append("assoc") or real_assoc(*a, **k))
    x = torch.randn(2, L, 8)
    model.zero_grad(set_to_none=True)
    ref.zero_grad(set_to_none=True)
    model(x).square().mean().backward()
    ref(x.double()).square().mean().backward()
    assert calls == (["assoc"] if L == 1 else ["kernel"])
    got = dict(model.named_parameters())
    for name, p in ref.named_parameters():
        g, want = got[name].grad, p.grad
        if L == 1:  # the transitions are unused at L = 1 (h_{-1} = 0): None or zeros
            g = torch.zeros_like(p) if g is None else g
            want = torch.zeros_like(p) if want is None else want
        assert g is not None and want is not None, name
        _close(g, want, tol, name)
    model.zero_grad(set_to_none=True)
