"""S4D in Triton (interpreter): the recurrence against ssmc.semantics.diagonal.s4d_recurrence,
the Vandermonde kernel against s4d_kernel, the FFT convolution against s4d_fft_conv."""

import pytest
import torch

from ssmc.codegen.triton.s4d import (S4dRecurrentConfig, VandermondeConfig, fft_causal_conv,
                                     s4d_conv, s4d_kernel_vandermonde, s4d_recurrent)
from ssmc.semantics.diagonal import (discretize_bilinear, discretize_zoh, s4d_fft_conv,
                                     s4d_kernel, s4d_recurrence)
from ssmc.semantics.init import complex_normal, s4d_init, s4d_real


def s4d_params(d, N, kind="lin", method="zoh"):
    """Discrete S4D parameters from the paper's inits (MODELS.md section 1)."""
    if kind == "real":
        A = s4d_real(N).float().expand(d, N)
        B, C = torch.ones(d, N), torch.randn(d, N)
    else:
        A = s4d_init(kind, N).to(torch.complex64).expand(d, N)
        B = torch.ones(d, N, dtype=torch.complex64)
        C = complex_normal((d, N))
    dt = torch.exp(torch.empty(d).uniform_(-6.9, -2.3))  # log-uniform in [1e-3, 1e-1]
    discretize = discretize_zoh if method == "zoh" else discretize_bilinear
    Abar, Bbar = discretize(A, B, dt)
    return Abar, Bbar, C.to(Bbar.dtype) if kind == "real" else C


def check(out, ref, tol):
    assert out.dtype == ref.dtype and out.shape == ref.shape
    assert not torch.isnan(out.float()).any()
    torch.testing.assert_close(out, ref, **tol[out.dtype])


RECURRENT_CASES = {
    "B2-D5-L7-N4-lin": (2, 5, 7, 4, "lin", "zoh", True, False),
    "B1-D3-L1-N16-inv": (1, 3, 1, 16, "inv", "bilinear", False, True),
    "B2-D5-L7-N16-legs": (2, 5, 7, 16, "legs", "zoh", True, True),
    "B2-D5-L7-N4-real": (2, 5, 7, 4, "real", "zoh", True, True),
}


@pytest.mark.parametrize("case", list(RECURRENT_CASES))
def test_recurrence_matches_oracle(case, tol):
    b, d, L, N, kind, method, has_D, has_h0 = RECURRENT_CASES[case]
    Abar, Bbar, C = s4d_params(d, N, kind, method)
    u = torch.randn(b, d, L)
    D = torch.randn(d) if has_D else None
    h0 = torch.randn(b, d, N, dtype=Abar.dtype) if has_h0 else None
    kw = dict(D=D, initial_state=h0, return_final_state=True)
    y, h = s4d_recurrent(u, Abar, Bbar, C, **kw, config=S4dRecurrentConfig(block_d=2))
    ry, rh = s4d_recurrence(u, Abar, Bbar, C, **kw)
    check(y, ry, tol)
    assert h.dtype == rh.dtype
    torch.testing.assert_close(h, rh, **tol[torch.float32])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_recurrence_half_inputs(dtype, tol):
    Abar, Bbar, C = s4d_params(5, 4)
    u, D = torch.randn(2, 5, 7).to(dtype), torch.randn(5)
    check(s4d_recurrent(u, Abar, Bbar, C, D), s4d_recurrence(u, Abar, Bbar, C, D), tol)


def test_recurrence_without_conj_pair(tol):
    Abar, Bbar, C = s4d_params(4, 4)
    u = torch.randn(1, 4, 6)
    check(s4d_recurrent(u, Abar, Bbar, C, conj_pair=False),
          s4d_recurrence(u, Abar, Bbar, C, conj_pair=False), tol)


@pytest.mark.parametrize("kind", ["lin", "real"])
@pytest.mark.parametrize("L", [1, 7, 37])
def test_vandermonde_matches_oracle(kind, L, tol):
    Abar, Bbar, C = s4d_params(5, 16, kind)
    K = s4d_kernel_vandermonde(Abar, Bbar, C, L, config=VandermondeConfig(block_d=2, block_l=8))
    check(K, s4d_kernel(Abar, Bbar, C, L), tol)


def test_vandermonde_negative_and_zero_real_Abar(tol):
    """A real power of a negative base alternates in sign; 0^0 = 1."""
    Abar = torch.tensor([[0.9, -0.5, 0.0, -1.0]]).repeat(3, 1)
    Bbar, C = torch.randn(3, 4), torch.randn(3, 4)
    check(s4d_kernel_vandermonde(Abar, Bbar, C, 9), s4d_kernel(Abar, Bbar, C, 9), tol)


def test_vandermonde_without_conj_pair(tol):
    Abar, Bbar, C = s4d_params(3, 4)
    check(s4d_kernel_vandermonde(Abar, Bbar, C, 6, conj_pair=False),
          s4d_kernel(Abar, Bbar, C, 6, conj_pair=False), tol)


@pytest.mark.parametrize("L", [1, 7, 30])
def test_fft_conv_matches_oracle(L, tol):
    u, K, D = torch.randn(2, 4, L), torch.randn(4, L), torch.randn(4)
    check(fft_causal_conv(u, K, D), s4d_fft_conv(u, K, D), tol)


def test_conv_form_equals_recurrence(tol):
    """The two S4D algorithms agree: Vandermonde kernel + FFT against the plain recurrence."""
    Abar, Bbar, C = s4d_params(5, 16)
    u, D = torch.randn(2, 5, 23), torch.randn(5)
    check(s4d_conv(u, Abar, Bbar, C, D), s4d_recurrence(u, Abar, Bbar, C, D), tol)


# Issue 4's grid: L in {1, 7, 64, 333}, every input dtype, complex (S4D-Lin) and real
# (S4D-Real) states.  block_l 64: L=64 is one whole block, L=333 ends in a ragged one.
LENGTHS = [1, 7, 64, 333]
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@pytest.mark.parametrize("kind", ["lin", "real"])
@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("L", LENGTHS)
def test_recurrence_lengths_and_dtypes(kind, dtype, L, tol):
    Abar, Bbar, C = s4d_params(3, 4, kind)
    u, D = torch.randn(1, 3, L).to(DTYPES[dtype]), torch.randn(3)
    h0 = torch.randn(1, 3, 4, dtype=Abar.dtype)
    kw = dict(D=D, initial_state=h0, return_final_state=True)
    y, h = s4d_recurrent(u, Abar, Bbar, C, **kw, config=S4dRecurrentConfig(block_d=2))
    ry, rh = s4d_recurrence(u, Abar, Bbar, C, **kw)
    check(y, ry, tol)
    torch.testing.assert_close(h, rh, **tol[DTYPES[dtype]])


@pytest.mark.parametrize("kind", ["lin", "real"])
@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("L", LENGTHS)
def test_conv_path_lengths_and_dtypes(kind, dtype, L, tol):
    """The FFT path end to end (Vandermonde kernel in Triton, torch.fft) against the oracle's
    recurrence; the kernel alone against the oracle's kernel."""
    Abar, Bbar, C = s4d_params(3, 4, kind)
    K = s4d_kernel_vandermonde(Abar, Bbar, C, L, config=VandermondeConfig(block_d=2, block_l=64))
    check(K, s4d_kernel(Abar, Bbar, C, L), tol)
    u, D = torch.randn(1, 3, L).to(DTYPES[dtype]), torch.randn(3)
    check(s4d_conv(u, Abar, Bbar, C, D), s4d_recurrence(u, Abar, Bbar, C, D), tol)


@pytest.mark.parametrize("name, bad, message", [
    ("Bbar", torch.randn(5, 3), r"^Bbar: expected shape \(dim=5, dstate=4\)"),
    ("C", torch.randn(4, 4), r"^C: expected shape \(dim=5, dstate=4\)"),
    ("D", torch.randn(4), r"^D: expected shape \(dim=5\)"),
    ("initial_state", torch.randn(2, 5, 5), r"^initial_state: expected shape"),
    ("conj_pair", 1, r"^conj_pair: expected a bool"),
])
def test_bad_argument_is_named(name, bad, message):
    Abar, Bbar, C = s4d_params(5, 4)
    kw = dict(u=torch.randn(2, 5, 7), Abar=Abar, Bbar=Bbar, C=C, D=None, conj_pair=True,
              initial_state=None)
    kw[name] = bad
    with pytest.raises(ValueError, match=message):
        s4d_recurrent(**kw)


def test_vandermonde_bad_length():
    Abar, Bbar, C = s4d_params(2, 4)
    with pytest.raises(ValueError, match="^L: expected a non-negative int"):
        s4d_kernel_vandermonde(Abar, Bbar, C, -1)


def test_vandermonde_long_sequences_keep_fp32_accuracy():
    """|Abar| near 1 and large angles at L 8192: the power split at each tile (Abar^l0 from
    the host in float64) keeps K within 2e-5 of float64 relative to its largest value; an fp32
    angle l * arg over the whole length was off by 4.8e-4 here."""
    torch.manual_seed(0)
    d, N, L = 4, 8, 8192
    r = torch.rand(d, N, dtype=torch.float64) * 1e-4
    th = torch.rand(d, N, dtype=torch.float64) * 3.0
    Abar = (torch.exp(-r) * torch.exp(1j * th)).to(torch.complex64)
    Bbar = torch.randn(d, N, dtype=torch.complex64)
    C = torch.randn(d, N, dtype=torch.complex64)
    K = s4d_kernel_vandermonde(Abar, Bbar, C, L)
    want = s4d_kernel(*(t.to(torch.complex128) for t in (Abar, Bbar, C)), L)
    assert ((K.double() - want).abs().max() / want.abs().max()).item() < 2e-5
