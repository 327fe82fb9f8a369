"""The diagonal time-invariant SSM (S4D and the polar / LRU form) on the CPU paths of
ssmc.codegen.composite.diagonal: the blocked-Vandermonde FFT convolution and the TVM recurrence,
against ssmc.semantics.diagonal (in float64, so that the oracle's own fp32 rounding of large
powers does not count); the compiled s4d and lru_polar models."""

from __future__ import annotations

import pytest
import torch

import ssmc
from ssmc.codegen.composite.diagonal import diagonal_ssm_fast, vandermonde_kernel
from ssmc.paths import zoo_dir
from ssmc.semantics.diagonal import s4d_fft_conv, s4d_kernel, s4d_recurrence
from ssmc.semantics.model import build_reference
from ssmc.semantics.modules_ssm import DiagonalSSM

FP32 = dict(rtol=6e-4, atol=2e-3)
KINDS = {
    "real": dict(complex=False, init="real"),
    "lin": dict(complex=True, init="lin"),
    "inv_no_pair": dict(complex=True, init="inv", conj_pair=False),
    "polar": dict(complex=True, parameterization="polar"),
    "bilinear_negative": dict(complex=False, init="real", discretization="bilinear", dt_min=1.0,
                              dt_max=10.0),  # Abar < 0 for some modes
}


def _wide(t):
    return t.to(torch.complex128) if t.is_complex() else t.double()


def _oracle(m, u):
    """y (b, L, d) in float64 from the module's discrete parameters."""
    Ab, Bb, C = (_wide(t) for t in m.discrete())
    K = s4d_kernel(Ab, Bb, C, u.shape[1], m.conj_pair)
    return s4d_fft_conv(u.transpose(1, 2).double(), K, m.D.double()).transpose(1, 2)


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("L", [1, 7, 100, 1000])
@pytest.mark.parametrize("algorithm", ["fft", "sequential"])
def test_matches_oracle(kind, L, algorithm):
    torch.manual_seed(L)
    m = DiagonalSSM(24, 8, **KINDS[kind])
    u = torch.randn(2, L, 24)
    with torch.no_grad():
        Ab, Bb, C = m.discrete()
        y = diagonal_ssm_fast(u, Ab, Bb, C, m.D, m.conj_pair, algorithm)
        assert y.shape == u.shape and y.dtype == u.dtype
        torch.testing.assert_close(y.double(), _oracle(m, u), **FP32)


def test_recurrence_oracle_agrees_too():
    m = DiagonalSSM(8, 6, complex=True, parameterization="polar")
    u = torch.randn(2, 50, 8)
    with torch.no_grad():
        Ab, Bb, C = m.discrete()
        want = s4d_recurrence(u.transpose(1, 2), Ab, Bb, C, m.D, m.conj_pair).transpose(1, 2)
        for alg in ("fft", "sequential"):
            torch.testing.assert_close(diagonal_ssm_fast(u, Ab, Bb, C, m.D, m.conj_pair, alg),
                                       want, **FP32)


@pytest.mark.parametrize("block", [1, 3, 16, 1024])
def test_vandermonde_blocks(block):
    """Any block size T gives the same kernel (T = 1: all powers from the coarse table)."""
    m = DiagonalSSM(4, 6, complex=True, init="lin")
    with torch.no_grad():
        Ab, Bb, C = m.discrete()
        K = vandermonde_kernel(Ab, Bb, C, 77, True, block=block)
        want = s4d_kernel(_wide(Ab), _wide(Bb), _wide(C), 77, True)
    assert K.shape == (4, 77) and K.dtype == torch.float32
    torch.testing.assert_close(K.double(), want, rtol=1e-5, atol=1e-5)
    assert vandermonde_kernel(Ab, Bb, C, 0).shape == (4, 0)


def test_fft_path_gradients_match_oracle():
    torch.manual_seed(0)
    m = DiagonalSSM(3, 4, complex=True, parameterization="polar")
    u = torch.randn(2, 13, 3, dtype=torch.float64, requires_grad=True)

    def run(fast):
        Ab, Bb, C = m.discrete()
        if fast:
            return diagonal_ssm_fast(u, Ab, Bb, C, m.D, m.conj_pair, "fft")
        return s4d_recurrence(u.transpose(1, 2), Ab, Bb, C, m.D, m.conj_pair).transpose(1, 2)

    params = [u, m.nu, m.phi, m.B, m.C, m.D]
    g1 = torch.autograd.grad(run(True).square().sum(), params)
    g2 = torch.autograd.grad(run(False).square().sum(), params)
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a.double(), b.double(), rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("call,name", [
    (lambda u, p: diagonal_ssm_fast(u, *p, algorithm="chunked"), "algorithm"),
    (lambda u, p: diagonal_ssm_fast(u[0], *p), "u"),
    (lambda u, p: diagonal_ssm_fast(u, p[0][:2], *p[1:]), "Abar"),
    (lambda u, p: vandermonde_kernel(*p, L=-1), "L"),
    (lambda u, p: vandermonde_kernel(*p, L=5, block=0), "block"),
])
def test_bad_arguments_name_the_argument(call, name):
    m = DiagonalSSM(4, 4, complex=True)
    with torch.no_grad(), pytest.raises(ValueError, match=name):
        call(torch.randn(2, 5, 4), m.discrete())


def test_tvm_recurrence_argument_checks():
    from ssmc.codegen.tvm.diagonal_scan import diagonal_scan

    m = DiagonalSSM(4, 4, complex=True)
    with torch.no_grad():
        Ab, Bb, C = m.discrete()
        with pytest.raises(ValueError, match="Bbar"):
            diagonal_scan(torch.randn(2, 5, 4), Ab, Bb[:, :1], C)
        with pytest.raises(ValueError, match="D"):
            diagonal_scan(torch.randn(2, 5, 4), Ab, Bb, C, D=torch.ones(3))
        with pytest.raises(ValueError, match="config must be a DiagonalScanConfig"):
            diagonal_scan(torch.randn(2, 5, 4), Ab, Bb, C, config={"mode_unroll": 4})
    from ssmc.codegen.tvm.diagonal_scan_tir import DiagonalScanConfig

    with pytest.raises(ValueError, match="mode_unroll >= 1"):
        DiagonalScanConfig(mode_unroll=0)


@pytest.mark.parametrize("spec,d_in,kernel", [
    ("s4d.yaml", 3, "tvm:diagonal_ssm/sequential"),
    ("lru_polar.yaml", 4, "tvm:diagonal_ssm/sequential"),
    ("lru_polar.yaml", 4, "tvm:diagonal_ssm/fft"),  # the spec asks for the FFT path
])
def test_compiled_models_match_reference(spec, d_in, kernel):
    torch.manual_seed(7)
    text = (zoo_dir() / spec).read_text()
    if kernel.endswith("/fft"):
        text = text.replace("parameterization: polar}", "parameterization: polar, algorithm: fft}")
        assert "algorithm: fft" in text
    model = ssmc.compile(text, "cpu", seqlen=1024).eval()
    assert set(model.kernels.values()) == {kernel} and kernel in model.summary()
    ref = build_reference(model.source_graph).eval()
    ref.load_state_dict(model.state_dict())
    for L in (1, 7, 100):
        x = torch.randn(2, L, d_in)
        with torch.no_grad():
            torch.testing.assert_close(model(x), ref(x), **FP32)
    # gradients: the FFT path is differentiable and runs for training
    x = torch.randn(2, 33, d_in)
    model(x).square().mean().backward()
    ref(x).square().mean().backward()
    grads = dict(ref.named_parameters())
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, grads[name].grad, rtol=1e-3, atol=1e-5, msg=name)
