"""Every CPU (TVM) kernel family that takes a sequence length, at the awkward lengths
L = 1, 7, 1000, 4097 (one step, shorter than any tile, a long run that no tile divides, one past
a power of two): the forward against the eager oracle of ssmc.semantics, and where the family
has a backward kernel, the gradients of every input (torch.autograd through the ssmc op against
autograd through the oracle).

The oracles get float64 (complex128) copies of the inputs; all but selective_scan_ref and
ssd_ref (which compute in fp32 whatever they are given, mamba-ssm's reference convention)
then compute in float64, so at L = 4097 the comparison measures the fp32 kernel's error rather
than the oracle's own rounding.  Every comparison, outputs and gradients alike, uses DESIGN.md's
fp32 tolerance as it stands (rtol 6e-4, atol 2e-3: no atol scaled for the long lengths).  That
holds because the operands keep every recurrence contractive or near it (a stable A, a bounded
PLRNN W, near-identity dense blocks): states and gradients stay O(1..1e3) at L = 4097 and the
largest error seen is under a tenth of the tolerance.  Both sides of a gradient comparison
backpropagate the same fixed random cotangent of every output.  Every check also records the
TVM kernels that ran (ssmc.codegen.tvm.build.record_kernels), so a silent fall back to a torch
path fails the test.

Sizes are small (channels and states 4..16, batch 1..2): the lengths are the point.  Kernels
come from the default on-disk cache (~/.cache/ssmc, or SSMC_CACHE_DIR), shared with the other
kernel tests."""

from __future__ import annotations

import copy

import pytest
import torch

pytest.importorskip("tvm")

from ssmc.codegen.tvm.build import record_kernels

from .kernelutil import plrnn_operands, ssm2d_operands

LENGTHS = (1, 7, 1000, 4097)
F64, C128 = torch.float64, torch.complex128


# ----------------------------------------------------------------------------- helpers

def _wide(t):
    """The oracle's copy of a leaf: float64 / complex128, a fresh leaf that wants a gradient."""
    if t is None:
        return None
    return t.detach().to(C128 if t.is_complex() else F64).requires_grad_(t.requires_grad)


def _leaves(*ts):
    return [None if t is None else t.detach().clone().requires_grad_() for t in ts]


def _close(got, want, tol, name):
    """An fp32 kernel result against the oracle's, within DESIGN.md's fp32 tolerance."""
    assert got is not None, f"{name}: no gradient"
    assert got.shape == want.shape, f"{name}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    assert torch.isfinite(torch.view_as_real(got) if got.is_complex() else got).all(), name
    torch.testing.assert_close(got.detach().to(want.dtype), want.detach(),
                               **tol[torch.float32], msg=lambda m: f"{name}: {m}")


def _close_grads(names, ours, theirs, tol):
    for name, a, r in zip(names, ours, theirs):
        if r is None:
            continue
        if r.grad is None or a.grad is None:  # an input the result does not depend on (the
            # GRC cell's weights at L = 1: no merge): no gradient, or zeros, on both sides
            for g in (a.grad, r.grad):
                assert g is None or not g.any(), f"d{name}: unused, but a non-zero gradient"
            continue
        _close(a.grad, r.grad, tol, f"d{name}")


def _families(used) -> set:
    """{'selective_scan', 'selective_scan_bwd', ...}: the kernel families in a record."""
    return {name.rsplit("-", 1)[0] for name in used}


def _loss(outs, seed=99):
    """<out, g> summed over the outputs, with fixed random weights g (every output element
    gets its own cotangent, so no gradient is accidentally zero or symmetric)."""
    gen = torch.Generator().manual_seed(seed)
    total = 0
    for o in outs:
        if o.is_complex():
            o = torch.view_as_real(o)
        # drawn in fp32 whatever o's dtype (the stream depends on it), so both sides get
        # the same cotangent
        total = total + (o * torch.randn(o.shape, generator=gen).to(o.dtype)).sum()
    return total


# ----------------------------------------------------------------------------- Mamba-1

def check_selective_scan(L, tol):
    """ssmc.runtime.library.selective_scan on the TVM backend (forward kernel, then the TVM
    backward kernel; channels-last 'bld', grouped B/C, D, z, delta bias, softplus, an initial
    state and the last state in the loss) against selective_scan_ref."""
    from ssmc.runtime import library as lib
    from ssmc.semantics.selective import selective_scan_ref

    # one row at L = 4097: the oracle's backward costs O(b d N L^2) (each step's select from
    # the (b, d, L, N) tensors allocates a whole-size gradient), ~15 s with two rows
    b, d, N, g = 2 if L < 4097 else 1, 16, 8, 2
    gen = torch.Generator().manual_seed(L)
    r = lambda *s: torch.randn(*s, generator=gen)
    ours = {"u": r(b, L, d), "delta": 0.5 * r(b, L, d),
            "A": -torch.rand(d, N, generator=gen) - 0.2, "B": r(b, L, g, N),
            "C": r(b, L, g, N), "D": r(d), "z": r(b, L, d), "delta_bias": 0.3 * r(d),
            "initial_state": r(b, d, N)}
    ours = dict(zip(ours, _leaves(*ours.values())))
    with record_kernels() as used:
        y, last = lib.selective_scan(**ours, delta_softplus=True, layout="bld",
                                     return_last_state=True, backend="tvm")
        fwd = _families(used)
        _loss([y, last]).backward()
    assert fwd == {"selective_scan"} and "selective_scan_bwd" in _families(used)
    theirs = {k: _wide(v) for k, v in ours.items()}
    ref_in = dict(theirs, u=theirs["u"].transpose(1, 2), delta=theirs["delta"].transpose(1, 2),
                  z=theirs["z"].transpose(1, 2), B=theirs["B"].permute(0, 2, 3, 1),
                  C=theirs["C"].permute(0, 2, 3, 1))
    y_ref, last_ref = selective_scan_ref(**ref_in, delta_softplus=True, return_last_state=True)
    y_ref = y_ref.transpose(1, 2)
    _close(y, y_ref, tol, "y")
    _close(last, last_ref, tol, "last_state")
    _loss([y_ref, last_ref]).backward()
    _close_grads(list(ours), list(ours.values()), list(theirs.values()), tol)


# ----------------------------------------------------------------------------- Mamba-2 SSD

def check_ssd(L, tol):
    """ssmc.runtime.library.ssd on the TVM backend (the SSD forward kernel, then its TVM
    backward) with D per head, z, dt bias + softplus, initial and final states, against
    ssd_ref."""
    from ssmc.runtime import library as lib
    from ssmc.semantics.selective import ssd_ref

    b, h, p, g, n = 2, 2, 8, 1, 8
    gen = torch.Generator().manual_seed(L)
    r = lambda *s: torch.randn(*s, generator=gen)
    ours = {"x": r(b, L, h, p), "dt": 0.5 * r(b, L, h),
            "A": -torch.rand(h, generator=gen) - 0.2, "B": r(b, L, g, n), "C": r(b, L, g, n),
            "D": r(h), "z": r(b, L, h, p), "dt_bias": 0.3 * r(h),
            "initial_states": r(b, h, p, n)}
    ours = dict(zip(ours, _leaves(*ours.values())))
    with record_kernels() as used:
        y, final = lib.ssd(**ours, chunk_size=64, dt_softplus=True, return_final_states=True,
                           backend="tvm")
        fwd = _families(used)
        _loss([y, final]).backward()
    assert fwd == {"selective_scan"} and "selective_scan_bwd" in _families(used)
    theirs = {k: _wide(v) for k, v in ours.items()}
    y_ref, final_ref = ssd_ref(**theirs, dt_softplus=True, return_final_states=True)
    _close(y, y_ref, tol, "y")
    _close(final, final_ref, tol, "final_states")
    _loss([y_ref, final_ref]).backward()
    _close_grads(list(ours), list(ours.values()), list(theirs.values()), tol)


# ----------------------------------------------------------------------------- dense (lcde)

def check_dense(L, tol):
    """ssmc.codegen.tvm.dense_scan.dense_scan with the transitions built in the kernel
    (A_t = sum_k x_tk A_k + A0, block-diagonal: 2 blocks of 4) and an initial state, forward
    and its TVM adjoint kernel, against dense_scan_ref."""
    from ssmc.codegen.tvm.dense_scan import dense_scan
    from ssmc.semantics.dense import dense_scan_ref

    b, K, nb, bs = 2, 5, 2, 4
    gen = torch.Generator().manual_seed(L)
    r = lambda *s: torch.randn(*s, generator=gen)
    x = r(b, L, K)
    # near-identity blocks (the lcde's I + A_0) and a small input-dependent part: the state
    # neither vanishes nor blows up over 4097 steps (|h| stays ~100; with A_k three times
    # larger it reaches ~3000 and the gradients ~1e6, which no fixed atol fits)
    A_k = r(K, nb, bs, bs) * 0.15 / (K * bs) ** 0.5
    A0 = 0.95 * torch.eye(bs).expand(nb, bs, bs) + 0.02 * r(nb, bs, bs)
    ours = _leaves(r(b, L, nb * bs), x, A_k, A0, r(b, nb * bs))
    u, x, A_k, A0, h0 = ours
    with record_kernels() as used:
        h = dense_scan(u, x=x, A_k=A_k, A0=A0, initial_state=h0)
        fwd = _families(used)
        _loss([h]).backward()
    assert fwd == {"dense_scan"} and "dense_scan_bwd" in _families(used)
    theirs = [_wide(t) for t in ours]
    u_, x_, A_k_, A0_, h0_ = theirs
    A = torch.einsum("blk,knij->blnij", x_, A_k_) + A0_
    h_ref = dense_scan_ref(A, u_.reshape(b, L, nb, bs), h0_.reshape(b, nb, bs))
    h_ref = h_ref.reshape(b, L, nb * bs)
    _close(h, h_ref, tol, "h")
    _loss([h_ref]).backward()
    _close_grads(["u", "x", "A_k", "A0", "initial_state"], ours, theirs, tol)


# ----------------------------------------------------------------------------- diagonal (S4D)

def _diagonal_params(kind, d, n, seed):
    """(Abar, Bbar, C, D, conj_pair) of an S4D layer: 'real' (S4D-Real, a real state) or
    'complex' (S4D-Lin, conjugate pairs), discretised by ZOH with the module's log-uniform
    steps (|Abar| close to 1 for the slow modes: long memory, the hard case at L = 4097)."""
    from ssmc.semantics.modules_ssm import DiagonalSSM

    torch.manual_seed(seed)
    real = kind == "real"
    m = DiagonalSSM(d, n, complex=not real, init="real" if real else "lin")
    with torch.no_grad():
        Ab, Bb, C = m.discrete()
    return Ab, Bb, C, m.D.detach(), m.conj_pair


def _diagonal_oracle(u, Ab, Bb, C, D, conj_pair):
    """y (b, L, d) by the oracle's kernel and convolution (semantics.diagonal), float64."""
    from ssmc.semantics.diagonal import s4d_fft_conv, s4d_kernel

    K = s4d_kernel(Ab, Bb, C, u.shape[1], conj_pair)
    return s4d_fft_conv(u.transpose(1, 2), K, D).transpose(1, 2)


def _check_diagonal(kind, L, tol):
    """The TVM recurrence (diagonal_scan, forward only: the 'sequential' algorithm) and the
    TVM Vandermonde kernel pair behind ssmc::s4d_vandermonde (runtime.vandermonde.
    diagonal_conv, forward and backward) against the oracle."""
    from ssmc.codegen.tvm.diagonal_scan import diagonal_scan
    from ssmc.runtime import vandermonde as vm

    b, d, n = 2, 8, 8
    Ab, Bb, C, D, conj_pair = _diagonal_params(kind, d, n, seed=L)
    u = torch.randn(b, L, d, generator=torch.Generator().manual_seed(L))
    ours = _leaves(u, Ab, Bb, C, D)
    theirs = [_wide(t) for t in ours]
    y_ref = _diagonal_oracle(*theirs, conj_pair)
    with record_kernels() as used, torch.no_grad():
        y_seq = diagonal_scan(u, Ab, Bb, C, D, conj_pair)
    assert _families(used) == {"diagonal_scan"}
    _close(y_seq, y_ref, tol, "y (recurrence)")
    with record_kernels() as used:
        y = vm.diagonal_conv(*ours, conj_pair=conj_pair, backend="tvm")
        fwd = _families(used)
        _loss([y]).backward()
    assert fwd == {"s4d_vandermonde"} and "s4d_vandermonde_bwd" in _families(used)
    _close(y, y_ref, tol, "y (vandermonde)")
    _loss([y_ref]).backward()
    _close_grads(["u", "Abar", "Bbar", "C", "D"], ours, theirs, tol)


def check_diagonal_real(L, tol):
    _check_diagonal("real", L, tol)


def check_diagonal_complex(L, tol):
    _check_diagonal("complex", L, tol)


# ----------------------------------------------------------------------------- PLRNN

def _plrnn_operands(b, L, K, M, seed, z0=None):
    """kernelutil.plrnn_operands made contractive for any L: A in [0.4, 0.6] and the
    off-diagonal W scaled to spectral norm 0.35, so |A z + W relu(z)| <= 0.95 |z| (the drawn
    ones diverge over thousands of steps, to inf in fp32); the diagonal (which both sides
    ignore) is kept."""
    from ssmc.semantics.recurrence import offdiag

    s, A, W, h0, C, z0 = plrnn_operands(b, L, K, M, z0=z0, seed=seed)
    A = 0.4 + 0.5 * (A - 0.5)
    Wo = offdiag(W)
    W = Wo * (0.35 / torch.linalg.matrix_norm(Wo, 2)) + (W - Wo)
    return s, A, W, h0, C, z0


def _assert_both_relu_branches(z):
    frac = (z < 0).double().mean().item()
    assert 0.05 < frac < 0.95, f"the relu regime is not exercised ({frac:.2f} negative)"


def check_plrnn(L, tol):
    """ssmc.codegen.tvm.plrnn.plrnn (a per-row z0), forward kernel and the adjoint-recurrence
    kernel, against plrnn_ref."""
    from ssmc.codegen.tvm.plrnn import plrnn
    from ssmc.semantics.recurrence import plrnn_ref

    ours = _leaves(*_plrnn_operands(2, L, 3, 8, seed=L, z0="batch"))
    with record_kernels() as used:
        z = plrnn(*ours[:5], z0=ours[5])
        fwd = _families(used)
        _loss([z]).backward()
    assert fwd == {"plrnn"} and _families(used) == {"plrnn", "plrnn_backward"}
    theirs = [_wide(t) for t in ours]
    z_ref = plrnn_ref(*theirs[:5], z0=theirs[5])
    if L > 1:
        _assert_both_relu_branches(z_ref)
    _close(z, z_ref, tol, "z")
    _loss([z_ref]).backward()
    _close_grads(["s", "A", "W", "h0", "C", "z0"], ours, theirs, tol)


def check_plrnn_hrf(L, tol):
    """The PLRNN with the HRF read-out (17 taps of SPM's double gamma, per unit) fused into
    the kernel: the inference kernel (z, hrf * z), and the ssmc::plrnn op with the fused
    read-out under autograd (its adjoint kernel + the convolution's adjoint), against
    plrnn_ref and causal_conv_direct."""
    from ssmc.codegen.tvm.plrnn import plrnn
    from ssmc.runtime import plrnn_op  # noqa: F401  (defines the ssmc::plrnn ops)
    from ssmc.semantics.recurrence import (
        causal_conv_direct,
        hrf_double_gamma,
        plrnn_ref,
    )

    M = 6
    s, A, W, h0, C, _ = _plrnn_operands(2, L, 2, M, seed=L + 1)
    hrf = hrf_double_gamma(2.0, 17) * (1 + torch.rand(M, 1, generator=torch.Generator()
                                                      .manual_seed(L)))
    with record_kernels() as used, torch.no_grad():
        z, zc = plrnn(s, A, W, h0, C, hrf=hrf, conv="fused")
    assert _families(used) == {"plrnn"}
    ours = _leaves(s, A, W, h0, C, hrf)
    taps = min(hrf.shape[-1], L)
    with record_kernels() as used:
        z2, zc2 = torch.ops.ssmc.plrnn(*ours[:5], None, ours[5], taps, "", "")
        _loss([z2, zc2]).backward()
    assert _families(used) == {"plrnn", "plrnn_backward"}
    theirs = [_wide(t) for t in ours]
    z_ref = plrnn_ref(*theirs[:5])
    if L > 1:
        _assert_both_relu_branches(z_ref)
    zc_ref = causal_conv_direct(z_ref, theirs[5])
    for name, got, want in (("z", z, z_ref), ("zc", zc, zc_ref), ("z (op)", z2, z_ref),
                            ("zc (op)", zc2, zc_ref)):
        _close(got, want, tol, name)
    _loss([z_ref, zc_ref]).backward()
    _close_grads(["s", "A", "W", "h0", "C", "hrf"], ours, theirs, tol)


# ----------------------------------------------------------------------------- causal conv1d

def check_conv1d(L, tol):
    """The depthwise causal conv1d + SiLU: the inference kernel (codegen.tvm.conv1d) and the
    training pair (composite.causal_conv_train: the decode module's forward kernel and the
    TVM backward) against semantics.glue.causal_conv1d.  k = 4 > L at L = 1."""
    from ssmc.codegen.composite.causal_conv_train import causal_conv1d_train
    from ssmc.codegen.tvm.conv1d import causal_conv1d
    from ssmc.semantics.glue import causal_conv1d as conv_ref

    b, c, k = 2, 12, 4
    gen = torch.Generator().manual_seed(L)
    x, w, bias = (torch.randn(*s, generator=gen) for s in ((b, L, c), (c, 1, k), (c,)))
    ours = _leaves(x, w, bias)
    theirs = [_wide(t) for t in ours]
    y_ref = conv_ref(*theirs, "silu")
    with record_kernels() as used, torch.no_grad():
        y_inf = causal_conv1d(x, w, bias, "silu")
    assert _families(used) == {"causal_conv1d"}
    _close(y_inf, y_ref, tol, "y (inference kernel)")
    with record_kernels() as used:
        y = causal_conv1d_train(*ours, activation="silu")
        _loss([y]).backward()
    assert "causal_conv1d_bwd" in _families(used)
    _close(y, y_ref, tol, "y (training forward)")
    _loss([y_ref]).backward()
    _close_grads(["x", "weight", "bias"], ours, theirs, tol)


# ----------------------------------------------------------------------------- nested (BBT)

def _check_nested(k, L, tol):
    """Nested recursion with the BBT inner tree (d = 8, arity k): the level-synchronous plan
    with the TVM GRC epilogue (no gradient: composite.nested.run_plan; with gradients: the
    ssmc::nested_tree op and its reverse level walk) against nested_ref."""
    from ssmc.codegen.composite import nested as N
    from ssmc.semantics.modules_misc import NestedRecursion
    from ssmc.semantics.nested import nested_ref

    d = 8
    torch.manual_seed(L + k)
    m = NestedRecursion(d, chunk=k, inner="bbt")
    x = torch.randn(2, L, d)
    w = m.cell.weights()
    with record_kernels() as used, torch.no_grad():
        got = N.nested_tree(x, w, "bbt", k, epilogue="tvm")
    ref = copy.deepcopy(m).double()
    xr = x.double().requires_grad_()
    want = nested_ref(xr, ref.cell.weights(), "bbt", k)
    if L > 1:
        assert "grc_epilogue" in _families(used), _families(used)
    _close(got, want, tol, "root")
    params = [x.clone().requires_grad_(), *m.cell.parameters()]
    with record_kernels() as used:
        out = N.nested_tree(params[0], m.cell.weights(), "bbt", k, epilogue="tvm")
        _loss([out]).backward()
    if L > 1:
        assert "grc_epilogue" in _families(used), _families(used)
    _close(out, want, tol, "root (op)")
    _loss([want]).backward()
    names = ["x"] + [n for n, _ in m.cell.named_parameters()]
    _close_grads(names, params, [xr, *ref.cell.parameters()], tol)


def check_nested_k32(L, tol):
    _check_nested(32, L, tol)


def check_nested_k30(L, tol):
    _check_nested(30, L, tol)


# ----------------------------------------------------------------------------- ssm2d

def check_ssm2d(T, tol):
    """The 2-D SSM (Chimera's selective form: B/C per cell shared by the channels, steps per
    cell by softplus in the kernel; D; both v directions) on a T x 3 grid: the forward kernel
    and the adjoint kernel (ssmc.codegen.tvm.ssm2d / ssm2d_bwd) against ssm2d_ref."""
    import torch.nn.functional as F

    from ssmc.codegen.tvm.ssm2d import ssm2d
    from ssmc.semantics.ssm2d import ssm2d_ref

    # one row at T >= 1000: the oracle's backward costs O(T^2) (every cell's coefficient is an
    # index into the whole grid, whose gradient autograd allocates per cell)
    args = ssm2d_operands(2 if T < 1000 else 1, T, 3, 8, 4, bc=("cell",) * 4,
                          dt=("cell", "cell"), seed=T, softplus=True)
    ours = _leaves(*args)
    with record_kernels() as used:
        y = ssm2d(*ours[:11], D=ours[11], bidirectional=True, dt_softplus=True)
        fwd = _families(used)
        _loss([y]).backward()
    assert fwd == {"ssm2d"} and "ssm2d_bwd" in _families(used)
    theirs = [_wide(t) for t in ours]
    y_ref = ssm2d_ref(*theirs[:9], F.softplus(theirs[9]), F.softplus(theirs[10]), D=theirs[11],
                      bidirectional=True)
    _close(y, y_ref, tol, "y")
    _loss([y_ref]).backward()
    names = ("x", "A1", "A2", "A3", "A4", "B1", "B2", "C1", "C2", "dt_t", "dt_v", "D")
    _close_grads(names, ours, theirs, tol)


# ----------------------------------------------------------------------------- the sweep

CHECKS = {
    "selective_scan": check_selective_scan,
    "ssd": check_ssd,
    "dense": check_dense,
    "diagonal_real": check_diagonal_real,
    "diagonal_complex": check_diagonal_complex,
    "plrnn": check_plrnn,
    "plrnn_hrf": check_plrnn_hrf,
    "conv1d": check_conv1d,
    "nested_bbt_k32": check_nested_k32,
    "nested_bbt_k30": check_nested_k30,
    "ssm2d": check_ssm2d,  # L is the grid's T (V = 3)
}
# (family, L) cases too slow for the default tier (the float64 oracles' Python loops, mostly):
# they run with -m slow
SLOW = {
    # the oracle's backward is quadratic in T (see check_ssm2d): minutes at T = 4097
    ("ssm2d", 4097),
}


def _cases():
    for family in CHECKS:
        for L in LENGTHS:
            marks = [pytest.mark.slow] if (family, L) in SLOW else []
            yield pytest.param(family, L, marks=marks, id=f"{family}-L{L}")


@pytest.mark.parametrize("family,L", list(_cases()))
def test_matches_reference_at_awkward_lengths(family, L, tol):
    CHECKS[family](L, tol)
