"""The TVM backward of the real-A Mamba-1 selective scan (ssmc.codegen.tvm.selective_scan_bwd)
against the torch reverse scan (ssmc.runtime.backward) and autograd through the oracle, and its
registration behind torch.ops.ssmc.selective_scan_bwd on the CPU.

Kernels are specialised on (d, N, groups of B and C, z given) and symbolic in b, L and the
chunk length, so the cases below share a handful of builds (one module-wide cache)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

pytest.importorskip("tvm")

from ssmc.codegen.tvm import selective_scan_bwd as sb  # noqa: E402
from ssmc.codegen.tvm.build import KernelCache  # noqa: E402
from ssmc.runtime import backward as bw  # noqa: E402
from ssmc.runtime import library as lib  # noqa: E402
from ssmc.semantics.selective import selective_scan_ref  # noqa: E402

TOL = dict(rtol=6e-4, atol=2e-3)  # mamba-ssm's fp32 tolerances
# d = 24 leaves a tail block in every partition (blocks of 16, or 8 in groups of 12): the
# kernel's narrower tail path runs in every case; N = 12 sums 8 states of the grouped B/C
# gradients with vector shuffles and 4 with scalar adds (on AVX2)
D_, N_ = 24, 12


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return KernelCache(root=tmp_path_factory.mktemp("tvm_bwd_cache"))


@pytest.fixture
def spy(monkeypatch, cache):
    """Counts the kernel's runs behind the op (and builds them in the module's cache)."""
    calls = []
    real = sb.scan_backward

    def counting(*args, **kwargs):
        out = real(*args, **kwargs, cache=cache)
        calls.append(out is not NotImplemented)
        return out

    monkeypatch.setattr(sb, "scan_backward", counting)
    return calls


def _problem(b=2, L=7, bc="g2", D=True, z=True, h0=True, bdl=False, seed=0):
    """The engine's (b, L, d) problem; bdl: its sequences and B/C are views of (b, d, L) and
    (b, g, N, L) tensors, as the library makes them for layout 'bdl' (the kernel then reads
    that layout)."""
    gen = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=gen)  # noqa: E731
    d, N = D_, N_

    def seq(t):
        return t.transpose(1, 2).contiguous().transpose(1, 2) if bdl else t

    def operand(kind):
        if kind == "ti":
            return r(d, N)
        M = r(b, L, int(kind[1]), N)
        return M.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2) if bdl else M

    kb, kc = bc.split("/") if "/" in bc else (bc, bc)
    return bw.ScanProblem(
        u=seq(r(b, L, d)), dt=seq(0.05 + 0.5 * torch.rand(b, L, d, generator=gen)),
        A=-torch.rand(d, N, generator=gen) - 0.2, B=operand(kb), C=operand(kc),
        D=r(d) if D else None, z=seq(r(b, L, d)) if z else None,
        h0=r(b, d, N) if h0 else None)


# (L, chunk, B/C kind, D, z, h0, grad of the last state, checkpoints from the forward, bdl)
ENGINE_CASES = [
    (1, 1, "g2", True, True, True, True, True, False),
    (7, 4, "g2", True, True, True, True, True, False),
    (7, 16, "g1", False, False, False, False, True, False),   # one chunk longer than L
    (7, 3, "ti", True, False, True, False, False, False),     # checkpoints recomputed
    (300, 64, "g2", True, True, False, True, True, False),
    (300, 64, "ti", False, True, True, True, False, False),
    (300, 16, "g1", True, True, True, False, True, False),    # many chunks
    (300, 16, "ti/g2", True, False, True, True, True, False),  # time-invariant B, grouped C
    (300, 16, "g2", True, True, True, True, True, True),
    (7, 3, "ti", True, True, False, False, False, True),
]


@pytest.mark.parametrize("case", ENGINE_CASES, ids=[
    f"L{c[0]}-K{c[1]}-{c[2].replace('/', '_')}" + "".join(
        f"-{n}" for n, on in zip(("D", "z", "h0", "glast", "ckpt", "bdl"), c[3:]) if on)
    for c in ENGINE_CASES])
def test_matches_the_torch_engine(case, cache):
    L, K, bc, D, z, h0, glast, ckpt, bdl = case
    p = _problem(L=L, bc=bc, D=D, z=z, h0=h0, bdl=bdl)
    assert sb._channels_major(p.u) == bdl
    b, _, d, N = p.shape
    gen = torch.Generator().manual_seed(1)
    gout = torch.randn(b, L, d, generator=gen)
    gl = torch.randn(b, d, N, generator=gen) if glast else None
    ck = bw.scan_forward(p, K)[2] if ckpt else None
    ref = bw.scan_backward(p, gout, gl, ck, K)
    got = sb.scan_backward(p, gout, gl, ck, K, cache=cache)
    assert set(got) == set(ref)
    for name, want in ref.items():
        if want is None:
            assert got[name] is None, name
            continue
        assert got[name].shape == want.shape, name
        torch.testing.assert_close(got[name], want, **TOL, msg=name)


def _leaves(layout="bdl", bc="g2", L=7, b=2, h0=True, seed=0):
    """mamba-ssm-style inputs in `layout` for the public function (requires_grad)."""
    gen = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=gen)  # noqa: E731
    d, N = D_, N_
    seq = (b, d, L) if layout == "bdl" else (b, L, d)
    if bc == "ti":
        B, C = r(d, N), r(d, N)
    else:
        g = int(bc[1])
        shape = (b, g, N, L) if layout == "bdl" else (b, L, g, N)
        B, C = r(*shape), r(*shape)
    kw = dict(u=r(*seq), delta=0.5 * r(*seq), A=-torch.rand(d, N, generator=gen) - 0.2, B=B,
              C=C, D=r(d), z=r(*seq), delta_bias=0.3 * r(d),
              initial_state=r(b, d, N) if h0 else None)
    return {k: v.requires_grad_() for k, v in kw.items() if v is not None}


def _to_bdl(kw):
    """'bld' inputs -> the oracle's (b, d, L) layout (differentiably)."""
    out = dict(kw)
    for k in ("u", "delta", "z"):
        out[k] = kw[k].transpose(1, 2)
    for k in ("B", "C"):
        out[k] = kw[k] if kw[k].dim() == 2 else kw[k].permute(0, 2, 3, 1)
    return out


def _loss(y, last, gen_seed=2):
    gen = torch.Generator().manual_seed(gen_seed)
    wy = torch.randn(y.shape, generator=gen)
    wl = torch.randn(last.shape, generator=gen)
    return (y * wy).sum() + (last * wl).sum()


# (layout, B/C kind, L, checkpoint interval, initial state)
OP_CASES = [("bdl", "g2", 7, 3, True), ("bld", "g1", 300, 64, False),
            ("bdl", "ti", 300, None, True), ("bld", "g2", 1, 0, False)]


@pytest.mark.parametrize("layout,bc,L,K,h0", OP_CASES,
                         ids=[f"{c[0]}-{c[1]}-L{c[2]}-K{c[3]}" for c in OP_CASES])
def test_op_runs_the_kernel_and_matches_autograd_through_the_oracle(layout, bc, L, K, h0, spy):
    """selective_scan (softplus, bias, D, z, h0, the last state in the loss) through the ops:
    the backward op runs the TVM kernel, and gradients agree with autograd through
    selective_scan_ref.  K = 0: the forward saves no checkpoints (the kernel recomputes them);
    None: the library picks the interval."""
    ours = _leaves(layout, bc, L, h0=h0)
    theirs = {k: v.detach().clone().requires_grad_() for k, v in ours.items()}
    y, last = lib.selective_scan(**ours, delta_softplus=True, layout=layout,
                                 return_last_state=True, checkpoint_every=K)
    _loss(y, last).backward()
    assert spy == [True]
    ref_in = theirs if layout == "bdl" else _to_bdl(theirs)
    y_ref, last_ref = selective_scan_ref(**ref_in, delta_softplus=True, return_last_state=True)
    if layout == "bld":
        y_ref = y_ref.transpose(1, 2)
    _loss(y_ref, last_ref).backward()
    for name in ours:
        torch.testing.assert_close(ours[name].grad, theirs[name].grad, **TOL, msg=name)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_op_gradients_equal_the_torch_engines(dtype, spy):
    """The same backward op with and without the kernel registered (bf16 inputs: both compute
    in fp32 and round the gradients to bf16)."""
    kw = _leaves("bdl", "g2", 300)
    tol = TOL if dtype == torch.float32 else dict(rtol=3e-2, atol=5e-2)

    def grads():
        leaves = {k: v.detach().to(dtype).requires_grad_() for k, v in kw.items()}
        y, last = lib.selective_scan(**leaves, delta_softplus=True, layout="bdl",
                                     return_last_state=True)
        _loss(y, last).backward()
        return {k: v.grad for k, v in leaves.items()}

    with_kernel = grads()
    assert spy == [True]
    key = ("selective_scan", "cpu")
    previous = lib._BACKWARD.get(key)
    lib.register_backward(*key, None)
    try:
        engine = grads()
    finally:
        lib.register_backward(*key, previous)
    assert spy == [True]
    for name in kw:
        assert with_kernel[name].dtype == dtype
        torch.testing.assert_close(with_kernel[name], engine[name], **tol, msg=name)


def test_complex_A_and_float64_fall_back_to_the_torch_engine(spy):
    kw = _leaves("bld", "g2", 7)
    for name, v in list(kw.items()):
        kw[name] = v.detach()
    kw["A"] = torch.complex(kw["A"], torch.randn_like(kw["A"]))
    kw["initial_state"] = kw["initial_state"].to(torch.complex64)
    for cast in (lambda t: t, lambda t: t.double() if not t.is_complex() else t.cdouble()):
        leaves = {k: cast(v).detach().clone().requires_grad_() for k, v in kw.items()}
        y, last = lib.selective_scan(**leaves, delta_softplus=True, layout="bld",
                                     return_last_state=True)
        (y.sum() + torch.view_as_real(last).sum()).backward()
        assert all(torch.isfinite(v.grad).all() for v in leaves.values())
    assert spy == []  # declined before the kernel
    real64 = {k: v.detach().double() for k, v in _leaves("bld", "g2", 7).items()}
    args = dict(grad_y=torch.ones_like(real64["u"]), grad_last=None, checkpoints=None,
                delta_softplus=True, conj_pair=True, layout="bld", checkpoint_every=4, **real64)
    assert sb.selective_scan_backward(**args) is NotImplemented


def test_registered_for_the_cpu_without_importing_tvm():
    assert lib._BACKWARD[("selective_scan", "cpu")] is lib.selective_scan_backward_tvm
    code = ("import sys, ssmc.runtime.library as lib; "
            "assert 'tvm' not in sys.modules, 'importing the library imported tvm'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
