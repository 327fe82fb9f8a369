"""The reverse-scan backward (ssmc.runtime.backward behind ssmc::selective_scan_bwd / ssd_bwd):
float64 gradchecks for every input the forwards take, agreement with autograd through the
oracles, memory (only chunk checkpoints are saved), and the per-device backward dispatch point."""

from __future__ import annotations

import pytest
import torch

from ssmc.runtime import library as lib
from ssmc.semantics.selective import selective_scan_ref, ssd_ref

F64 = torch.float64


def _mamba1_inputs(b=2, d=4, L=7, N=3, B_kind="grouped", cplx=False, dtype=F64, layout="bld",
                   seed=0):
    """Every input of the selective scan, in `layout`."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=dtype)  # noqa: E731
    seq = (b, L, d) if layout == "bld" else (b, d, L)
    A = -torch.rand(d, N, generator=g, dtype=dtype) - 0.2
    if cplx:
        A = torch.complex(A, r(d, N))
    if B_kind == "time_invariant":
        Bs, Cs = r(d, N), r(d, N)
    else:
        groups = 2 if B_kind == "grouped" else 1
        shape = (b, L, groups, N) if layout == "bld" else (b, groups, N, L)
        Bs, Cs = r(*shape), r(*shape)
    if cplx and B_kind == "complex_bc":
        Bs, Cs = torch.complex(Bs, r(*Bs.shape)), torch.complex(Cs, r(*Cs.shape))
    h0 = r(b, d, N) if not cplx else torch.complex(r(b, d, N), r(b, d, N))
    return dict(u=r(*seq), delta=0.5 * r(*seq), A=A, B=Bs, C=Cs, D=r(d), z=r(*seq),
                delta_bias=0.3 * r(d), initial_state=h0)


def _scan(kw, layout, conj_pair=True, K=3, backend="torch"):
    y, last = lib.selective_scan(**kw, delta_softplus=True, conj_pair=conj_pair, layout=layout,
                                 return_last_state=True, backend=backend, checkpoint_every=K)
    return y, torch.view_as_real(last) if last.is_complex() else last


CASES = [
    ("bld", "grouped", False, True),
    ("bld", "shared", False, True),
    ("bld", "time_invariant", False, True),
    ("bdl", "grouped", False, True),
    ("bld", "grouped", True, True),    # complex A, mamba-ssm's conj-pair readout
    ("bdl", "shared", True, False),    # complex A, Re<C, h>
    ("bld", "complex_bc", True, True),  # complex A, B and C
]


@pytest.mark.parametrize("layout,B_kind,cplx,conj_pair", CASES,
                         ids=["-".join(map(str, c)) for c in CASES])
def test_gradcheck_selective_scan_float64(layout, B_kind, cplx, conj_pair):
    kw = _mamba1_inputs(layout=layout, B_kind="grouped" if B_kind == "complex_bc" else B_kind,
                        cplx=cplx)
    if B_kind == "complex_bc":
        kw = _mamba1_inputs(layout=layout, B_kind="grouped", cplx=True)
        kw["B"] = torch.complex(kw["B"], torch.randn_like(kw["B"]))
        kw["C"] = torch.complex(kw["C"], torch.randn_like(kw["C"]))
    names = list(kw)
    leaves = [kw[n].clone().requires_grad_() for n in names]

    def f(*ts):
        return _scan(dict(zip(names, ts)), layout, conj_pair)

    # L = 7 with checkpoints every 3 steps: three chunks, the last one short
    assert torch.autograd.gradcheck(f, leaves, fast_mode=True, atol=1e-7, rtol=1e-5)


def test_gradcheck_selective_scan_float64_full_mode():
    """One case with the exact (slow) Jacobian comparison, all inputs."""
    kw = _mamba1_inputs(b=1, d=2, L=5, N=2)
    names = list(kw)
    leaves = [kw[n].clone().requires_grad_() for n in names]
    assert torch.autograd.gradcheck(lambda *ts: _scan(dict(zip(names, ts)), "bld", K=2), leaves)


@pytest.mark.parametrize("B_kind,cplx", [("grouped", False), ("time_invariant", False),
                                         ("shared", True)])
def test_backward_matches_reference_autograd(B_kind, cplx):
    """fp32 kernel path (TVM on the CPU) + reverse scan vs autograd through the oracle."""
    kw = _mamba1_inputs(b=2, d=16, L=21, N=4, B_kind=B_kind, cplx=cplx, dtype=torch.float32,
                        layout="bdl")
    if cplx:
        kw["initial_state"] = kw["initial_state"].to(torch.complex64)
    names = list(kw)
    ours = [kw[n].clone().requires_grad_() for n in names]
    theirs = [kw[n].clone().requires_grad_() for n in names]
    o = dict(zip(names, ours))
    y, last = lib.selective_scan(**o, delta_softplus=True, conj_pair=True, layout="bdl",
                                 return_last_state=True, checkpoint_every=8)
    t = dict(zip(names, theirs))
    Bt, Ct = t["B"], t["C"]
    if Bt.dim() == 4 and Bt.shape[1] == 1:
        Bt, Ct = Bt[:, 0], Ct[:, 0]
    yr, lr = selective_scan_ref(t["u"], t["delta"], t["A"], Bt, Ct, t["D"], t["z"],
                                t["delta_bias"], True, True, t["initial_state"], True)
    torch.testing.assert_close(y, yr, rtol=6e-4, atol=2e-3)
    gy, gl = torch.randn_like(y), torch.randn_like(last)
    torch.autograd.backward([y, last], [gy, gl])
    torch.autograd.backward([yr, lr], [gy, gl])
    for n, a, b in zip(names, ours, theirs):
        scale = b.grad.abs().max().clamp(min=1.0)
        torch.testing.assert_close(a.grad / scale, b.grad / scale, rtol=1e-3, atol=2e-4, msg=n)


SSD_CASES = [
    dict(groups=1, D="h", seq_idx=False, limit=False),
    dict(groups=2, D="hp", seq_idx=True, limit=True),
]


def _ssd_inputs(b=2, L=9, h=4, p=2, n=3, groups=1, D="h", dtype=F64, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=dtype)  # noqa: E731
    return dict(x=r(b, L, h, p), dt=0.5 * r(b, L, h), A=-torch.rand(h, generator=g, dtype=dtype)
                - 0.2, B=r(b, L, groups, n), C=r(b, L, groups, n),
                D=r(h) if D == "h" else r(h, p), z=r(b, L, h, p), dt_bias=0.3 * r(h),
                initial_states=r(b, h, p, n))


@pytest.mark.parametrize("case", SSD_CASES, ids=["plain", "groups-seqidx-limit"])
def test_gradcheck_ssd_float64(case):
    kw = _ssd_inputs(groups=case["groups"], D=case["D"])
    seq_idx = torch.tensor([[0] * 4 + [1] * 5, [0] * 7 + [1] * 2]) if case["seq_idx"] else None
    limit = (0.2, 1.5) if case["limit"] else (0.0, float("inf"))
    names = list(kw)
    leaves = [kw[n].clone().requires_grad_() for n in names]

    def f(*ts):
        return lib.ssd(**dict(zip(names, ts)), chunk_size=4, seq_idx=seq_idx, dt_softplus=True,
                       dt_limit=limit, return_final_states=True, backend="torch",
                       checkpoint_every=4)

    assert torch.autograd.gradcheck(f, leaves, fast_mode=True, atol=1e-7, rtol=1e-5)


def test_ssd_backward_matches_reference_autograd():
    kw = _ssd_inputs(b=2, L=13, h=4, p=3, n=4, groups=2, D="hp", dtype=torch.float32)
    seq_idx = torch.tensor([[0] * 6 + [1] * 7, [0] * 13])
    names = list(kw)
    ours = [kw[n].clone().requires_grad_() for n in names]
    theirs = [kw[n].clone().requires_grad_() for n in names]
    opts = dict(seq_idx=seq_idx, dt_softplus=True, dt_limit=(0.05, 2.0), return_final_states=True)
    y, f = lib.ssd(**dict(zip(names, ours)), chunk_size=4, **opts)
    yr, fr = ssd_ref(**dict(zip(names, theirs)), **opts)
    torch.testing.assert_close(y, yr, rtol=6e-4, atol=2e-3)
    gy, gf = torch.randn_like(y), torch.randn_like(f)
    torch.autograd.backward([y, f], [gy, gf])
    torch.autograd.backward([yr, fr], [gy, gf])
    for n, a, b in zip(names, ours, theirs):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-3, atol=1e-4, msg=n)


def test_only_checkpoints_are_saved():
    """The forward keeps the inputs and (b, L/K, d, N) checkpoints, never (b, L, d, N) states."""
    b, d, L, N = 2, 8, 64, 16
    kw = _mamba1_inputs(b=b, d=d, L=L, N=N, B_kind="shared", dtype=torch.float32)
    leaves = {k: v.requires_grad_() for k, v in kw.items()}
    saved = []

    def pack(t):
        saved.append(tuple(t.shape))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = lib.selective_scan(**leaves, delta_softplus=True, layout="bld", checkpoint_every=16)
    assert (b, L // 16, d, N) in saved
    assert max(torch.Size(s).numel() for s in saved) < b * L * d * N // 2
    y.sum().backward()
    assert all(v.grad is not None for v in leaves.values())


def test_checkpoint_interval_does_not_change_gradients():
    kw = _mamba1_inputs(b=1, d=4, L=19, N=3)
    grads = []
    for K in (1, 5, 19, 0):  # 0: no checkpoints saved, the backward recomputes them
        leaves = {k: v.clone().requires_grad_() for k, v in kw.items()}
        y, last = _scan(leaves, "bld", K=K)
        (y.square().sum() + last.sum()).backward()
        grads.append([v.grad for v in leaves.values()])
    for other in grads[1:]:
        for a, b in zip(grads[0], other):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_backward_dispatch_point():
    """register_backward routes the backward op per device; NotImplemented declines."""
    kw = _mamba1_inputs(b=1, d=4, L=5, N=2, dtype=torch.float32)
    calls = []

    def declines(**kwargs):
        calls.append(sorted(kwargs))
        return NotImplemented

    def zeros(**kwargs):
        calls.append("zeros")
        out = [torch.zeros_like(kwargs[n]) for n in ("u", "delta", "A", "B", "C")]
        out += [torch.zeros_like(kwargs[n]) if kwargs[n] is not None else kwargs["u"].new_empty(0)
                for n in ("D", "z", "delta_bias", "initial_state")]
        return tuple(out)

    previous = lib._BACKWARD.get(("selective_scan", "cpu"))  # the TVM kernel, by default
    try:
        lib.register_backward("selective_scan", "cpu", declines)
        leaves = {k: v.clone().requires_grad_() for k, v in kw.items()}
        lib.selective_scan(**leaves, backend="torch").sum().backward()
        assert calls and "grad_y" in calls[0] and "checkpoints" in calls[0]
        assert leaves["u"].grad.abs().sum() > 0  # the torch reverse scan ran
        lib.register_backward("selective_scan", "cpu", zeros)
        leaves = {k: v.clone().requires_grad_() for k, v in kw.items()}
        lib.selective_scan(**leaves, backend="torch").sum().backward()
        assert calls[-1] == "zeros" and leaves["u"].grad.abs().sum() == 0
    finally:
        lib.register_backward("selective_scan", "cpu", previous)
    with pytest.raises(ValueError, match="family"):
        lib.register_backward("nope", "cpu", zeros)
