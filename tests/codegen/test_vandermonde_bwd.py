"""S4D's kernel-generation backward (ssmc.runtime.vandermonde): the transposed Vandermonde
kernels of both backends (TVM CPU, Triton through the interpreter) and the torch one.

Oracle: autograd through ssmc.semantics.diagonal.s4d_kernel in float64.  float64 gradchecks run
the TVM and Triton kernels themselves (both build float64); fp32 kernels are held to DESIGN.md's
fp32 tolerance as a norm-wise relative error (the gradients of Abar grow like L^2, so an
element-wise atol means nothing across L).  Then the parameterisations (S4D ZOH / bilinear,
S4D-Real, polar) through DiagonalSSM.discrete(), and compiled models training through the new
path (kernel calls recorded) with the reference's gradients."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

import ssmc
from ssmc.codegen.triton.common import interpreting
from ssmc.paths import zoo_dir
from ssmc.runtime import vandermonde as vm
from ssmc.semantics.diagonal import s4d_kernel
from ssmc.semantics.model import build_reference
from ssmc.semantics.modules_ssm import DiagonalSSM

F64, C128 = torch.float64, torch.complex128
needs_interpreter = pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1",
                                       reason="Triton on CPU tensors needs TRITON_INTERPRET=1")
RTOL32 = 6e-4  # DESIGN.md's fp32 rtol, norm-wise


def _params(d, n, kind, seed=0, dtype=C128):
    """Discrete parameters: 'real' (S4D-Real, a real state, some Abar < 0), else complex
    with |Abar| in [0.5, 1) and phases spread over (-pi, pi]."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=F64)  # noqa: E731
    if kind == "real":
        A = torch.rand(d, n, generator=g, dtype=F64) * 1.9 - 0.95
        return A, r(d, n), r(d, n)
    mag = 1 - 0.5 * torch.rand(d, n, generator=g, dtype=F64) ** 3
    A = torch.polar(mag, 3.1 * (2 * torch.rand(d, n, generator=g, dtype=F64) - 1))
    return A.to(dtype), torch.complex(r(d, n), r(d, n)).to(dtype), \
        torch.complex(r(d, n), r(d, n)).to(dtype)


def _oracle_grads(A, B, C, gK, conj_pair):
    leaves = [t.detach().to(C128 if t.is_complex() else F64).requires_grad_() for t in (A, B, C)]
    K = s4d_kernel(*leaves, gK.shape[1], conj_pair)
    return torch.autograd.grad(K, leaves, gK.to(F64))


def _kernel_grads(backend, A, B, C, gK, conj_pair):
    leaves = [t.detach().clone().requires_grad_() for t in (A, B, C)]
    K = vm.vandermonde(*leaves, gK.shape[1], conj_pair, backend)
    return torch.autograd.grad(K, leaves, gK.to(K.dtype))


def _close(got, want, rtol):
    for a, b, name in zip(got, want, ("Abar", "Bbar", "C")):
        assert not torch.isnan(a).any(), name
        err = (a.to(b.dtype) - b).abs().max() / b.abs().max().clamp(min=1e-30)
        assert err <= rtol, f"{name}: norm-wise relative error {err:.2e} > {rtol:.1e}"


BACKENDS = ["tvm", pytest.param("triton", marks=needs_interpreter), "torch"]
KINDS = [("complex", True), ("complex", False), ("real", True)]  # (kind, conj_pair)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind,conj_pair", KINDS, ids=["conj_pair", "complex", "real"])
@pytest.mark.parametrize("L", [1, 7, 64, 70])
def test_gradcheck_float64(backend, kind, conj_pair, L):
    """The backend's kernels in float64 (Triton: its backward, the forward by torch, which is
    what the op runs for 64-bit parameters) against finite differences."""
    leaves = [t.requires_grad_() for t in _params(3, 5, kind)]
    # 64 steps: one full TVM chunk / Triton tile, whose g_(l+1) read stops at L; 70: two, the
    # last one short
    assert torch.autograd.gradcheck(lambda *p: vm.vandermonde(*p, L, conj_pair, backend),
                                    leaves, fast_mode=True)


def test_gradcheck_float64_full_mode_mixed_dtypes():
    """Exact Jacobians, with a real Abar and a real C in a complex computation (their
    gradients are the real parts) on the TVM kernels."""
    A, B, C = _params(2, 3, "complex")
    leaves = [A.abs().requires_grad_(), B.requires_grad_(), C.real.clone().requires_grad_()]
    assert torch.autograd.gradcheck(lambda *p: vm.vandermonde(*p, 9, True, "tvm"), leaves)


CASES = {  # id: (d, n, L, kind, conj_pair)
    "d3-N4-L1-conj": (3, 4, 1, "complex", True),
    "d3-N4-L7-real": (3, 4, 7, "real", True),
    "d5-N64-L1000-conj": (5, 64, 1000, "complex", True),
    "d5-N4-L1000-real": (5, 4, 1000, "real", True),
    "d4-N64-L4097-complex": (4, 64, 4097, "complex", False),
    "d16-N64-L4097-conj": (16, 64, 4097, "complex", True),
    "d3-N64-L4097-real": (3, 64, 4097, "real", True),
}
SLOW = {"d4-N64-L4097-complex", "d16-N64-L4097-conj"}
# the interpreter takes ~0.3 ms per op per program: 20 s for N 64 at L 1000, 95 s at L 4097
SLOW_INTERPRETED = {"d5-N64-L1000-conj", "d3-N64-L4097-real"}


def _cases():
    for backend in ("tvm", "triton", "torch"):
        for case in CASES:
            marks = [pytest.mark.slow] if case in SLOW or (
                backend == "triton" and case in SLOW_INTERPRETED) else []
            if backend == "triton":
                marks.append(needs_interpreter)
            yield pytest.param(backend, case, marks=marks, id=f"{backend}-{case}")


@pytest.mark.parametrize("backend,case", list(_cases()))
def test_fp32_kernels_match_float64_oracle(backend, case):
    """fp32 kernels (complex64 / float32 parameters) against the float64 oracle's gradients,
    for L = 1, 7, 1000, 4097 and N = 4 and 64."""
    d, n, L, kind, conj_pair = CASES[case]
    A, B, C = _params(d, n, kind, seed=L)
    if kind == "real":
        A, B, C = (t.float() for t in (A, B, C))
    else:
        A, B, C = (t.to(torch.complex64) for t in (A, B, C))
    gK = torch.randn(d, L)
    K = vm.vandermonde(A, B, C, L, conj_pair, backend)
    Kref = s4d_kernel(*(t.to(C128 if t.is_complex() else F64) for t in (A, B, C)), L, conj_pair)
    assert K.dtype == torch.float32
    _close([K], [Kref], RTOL32)
    _close(_kernel_grads(backend, A, B, C, gK, conj_pair), _oracle_grads(A, B, C, gK, conj_pair),
           RTOL32)


def test_zero_abar_and_empty_length():
    """Abar = 0 (0^0 = 1, no nan from log 0) and L = 0 (zero gradients).  The oracle's powers
    are nan at 0^0, so the reference here takes them by a cumulative product."""
    A, B, C = _params(2, 3, "complex")
    A[0, 0] = 0
    gK = torch.randn(2, 9, dtype=F64)
    leaves = [t.clone().requires_grad_() for t in (A, B, C)]
    steps = torch.cat([torch.ones_like(A)[..., None], leaves[0][..., None].expand(2, 3, 8)], -1)
    K = 2 * (leaves[2] * leaves[1])[..., None].mul(steps.cumprod(-1)).sum(1).real
    want = torch.autograd.grad(K, leaves, gK)
    for backend in ("tvm", "triton", "torch"):
        if backend == "triton" and os.environ.get("TRITON_INTERPRET") != "1":
            continue
        _close(_kernel_grads(backend, A, B, C, gK, True), want, 1e-12)
        g = _kernel_grads(backend, A, B, C, torch.zeros(2, 0, dtype=F64), True)
        assert all(t.abs().max() == 0 for t in g)


def test_parallel_tvm_kernels_match_serial(monkeypatch):
    """The thread-pool variant (chosen for large d n L) computes what the serial one does."""
    A, B, C = (t.to(torch.complex64) for t in _params(32, 6, "complex"))
    gK = torch.randn(32, 150)
    got = {}
    for flag in ("0", "1"):
        monkeypatch.setenv("SSMC_VANDERMONDE_PARALLEL", flag)
        got[flag] = [vm.vandermonde(A, B, C, 150, True, "tvm"),
                     *_kernel_grads("tvm", A, B, C, gK, True)]
    for a, b in zip(got["0"], got["1"]):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_function_pairs_any_kernels():
    """VandermondeFn takes the kernel functions themselves: the torch forward with the TVM
    backward, float64 gradcheck."""
    leaves = [t.requires_grad_() for t in _params(2, 3, "complex")]
    fwd, bwd = vm.KERNELS["torch"][0], vm.KERNELS["tvm"][1]
    assert torch.autograd.gradcheck(lambda *p: vm.VandermondeFn.apply(*p, 11, True, fwd, bwd),
                                     leaves, fast_mode=True)


def test_opcheck():
    """Fake tensors and the autograd registration of ssmc::s4d_vandermonde agree with it."""
    A, B, C = (t.to(torch.complex64).requires_grad_() for t in _params(3, 4, "complex"))
    checks = ("test_schema", "test_autograd_registration", "test_faketensor")
    torch.library.opcheck(torch.ops.ssmc.s4d_vandermonde.default, (A, B, C, 10, True, "tvm"),
                          test_utils=checks)
    torch.library.opcheck(torch.ops.ssmc.s4d_vandermonde.default, (A, B, C, 10, True, "torch"),
                          test_utils=checks)
    for backend in ("tvm", "torch"):
        torch.library.opcheck(torch.ops.ssmc.s4d_vandermonde_bwd.default,
                              (A.detach(), torch.randn(3, 10), backend), test_utils=checks)


@pytest.mark.skipif(not interpreting(), reason="the interpreter runs CPU tensors")
@pytest.mark.parametrize("kind", ["complex", "real"])
def test_opcheck_triton_pair(kind):
    """All of opcheck for ssmc::s4d_vandermonde_triton (its autograd formula too) and
    ssmc::s4d_vandermonde_bwd_triton: custom ops under the interpreter (triton_ops on a
    device; tests/codegen/test_triton_train_compile.py traces those)."""
    dt = torch.complex64 if kind == "complex" else torch.float32
    A, B, C = (t.to(dt).requires_grad_() for t in _params(3, 4, kind))
    torch.library.opcheck(torch.ops.ssmc.s4d_vandermonde_triton.default, (A, B, C, 10, True))
    torch.library.opcheck(torch.ops.ssmc.s4d_vandermonde_bwd_triton.default,
                          (A.detach(), torch.randn(3, 10)))


@pytest.mark.parametrize("opts", [
    dict(init="lin", discretization="zoh"),
    dict(init="inv", discretization="bilinear", conj_pair=False),
    dict(complex=False, init="real"),
    dict(parameterization="polar"),
], ids=["zoh-lin", "bilinear-inv", "real", "polar"])
def test_parameterisations_through_discrete(opts):
    """Gradients of DiagonalSSM's own parameters (log_dt, A, B, C, D; polar nu, phi) by the TVM
    path (diagonal_conv in fp32) against the module's reference forward in float64."""
    torch.manual_seed(3)
    mod = DiagonalSSM(6, 8, **opts)
    ref = DiagonalSSM(6, 8, **opts).double()
    ref.load_state_dict(mod.state_dict())
    u = torch.randn(2, 50, 6)
    Abar, Bbar, C = mod.discrete()
    y = vm.diagonal_conv(u, Abar, Bbar, C, mod.D, mod.conj_pair, backend="tvm")
    w = torch.randn_like(y)
    (y * w).sum().backward()
    (ref(u.double()) * w.double()).sum().backward()
    want = dict(ref.named_parameters())
    for name, p in mod.named_parameters():
        _close([p.grad], [want[name].grad], RTOL32)


def _compiled(spec, target, dims, seqlen):
    from ssmc.ir.spec import load_spec

    graph = load_spec(zoo_dir() / f"{spec}.yaml", dims=dims)
    torch.manual_seed(5)
    model = ssmc.compile(graph, target, seqlen=seqlen)
    ref = build_reference(model.source_graph)
    ref.load_state_dict(model.state_dict())
    return model, ref


def _check_training(model, ref, x):
    model(x).pow(2).mean().backward()
    ref(x).pow(2).mean().backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    for name, p in ref.named_parameters():
        assert grads[name] is not None, name
        torch.testing.assert_close(grads[name], p.grad, rtol=1e-3, atol=1e-5, msg=name)


@pytest.mark.parametrize("spec,d_in", [("s4d_complex", 1), ("s4d", 3), ("lru_polar", 4)])
def test_compiled_cpu_model_trains_through_tvm_kernels(spec, d_in):
    """A model compiled for the CPU trains through the TVM Vandermonde forward and backward
    kernels (recorded as they run), with the reference's gradients."""
    from ssmc.codegen.tvm.build import record_kernels

    model, ref = _compiled(spec, "cpu", {"d_model": 16, "d_state": 8}, 1024)
    x = torch.randn(2, 100, d_in)
    with record_kernels() as used:
        _check_training(model, ref, x)
    families = {name.rsplit("-", 1)[0] for name in used}
    assert {"s4d_vandermonde", "s4d_vandermonde_bwd"} <= families, families


@needs_interpreter
def test_compiled_triton_model_trains_through_triton_kernels(monkeypatch):
    """Compiled for sm_90 (the interpreter runs it): with gradients the node runs the Triton
    Vandermonde forward and its backward kernel (counted; through the ops
    ssmc::s4d_vandermonde_triton / _bwd_triton), with the reference's gradients."""
    from ssmc.codegen.triton.s4d import vandermonde as tfwd
    from ssmc.codegen.triton.s4d import vandermonde_bwd as tbwd

    calls = []

    def counted(module, attr, name):
        fn = getattr(module, attr)

        def wrapper(*a, **k):
            calls.append(name)
            return fn(*a, **k)
        monkeypatch.setattr(module, attr, wrapper)

    counted(tfwd, "plan_vandermonde", "fwd")
    counted(tbwd, "s4d_vandermonde_bwd", "bwd")
    model, ref = _compiled("s4d_complex", "sm_90", {"d_model": 8, "d_state": 8}, 64)
    _check_training(model, ref, torch.randn(2, 7, 1))
    assert calls == ["fwd", "fwd", "bwd", "bwd"]  # two layers


@pytest.mark.slow
def test_torch_compile_traces_the_op():
    """torch.compile (fullgraph) of a compiled CPU model's training step: the op is opaque,
    its fake and autograd formulas carry the trace; same gradients as eager."""
    model, _ = _compiled("s4d_complex", "cpu", {"d_model": 8, "d_state": 8}, 1024)
    x = torch.randn(2, 33, 1)
    model(x).pow(2).mean().backward()
    want = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    torch.compile(model, fullgraph=True)(x).pow(2).mean().backward()
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, want[n], rtol=1e-4, atol=1e-6, msg=n)


def test_triton_backward_compiles_for_float64(tmp_path):
    """The interpreter does not type-check like the compiler: the backward kernel's float64
    variant (gradchecks; its own 32-step tile) compiled ahead of time for sm_90 without
    spills (no GPU needed; a subprocess).  The fp32 kernel is the family s4d.vandermonde_bwd's,
    compiled for sm_90 and gfx942 in test_triton_aot.py."""
    from ssmc.codegen.triton.aot import compile_family

    (k,) = compile_family("s4d.vandermonde_bwd", "sm_90", dtype="fp64", out_dir=tmp_path)
    assert k.n_spills == 0 and k.fits, k
    assert ".f64" in Path(k.files["ptx"]).read_text()
