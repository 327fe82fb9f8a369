"""Mamba-2 SSD: the chunked matmul form (ssd_chunked_ref) against the sequential oracle
(ssd_ref), ssd_ref against the Mamba-1 scan it specialises, and the module."""

import pytest
import torch

from ssmc.semantics.modules_ssm import SelectiveSSM, SSDSSM
from ssmc.semantics.scan_assoc import ssd_chunked_ref
from ssmc.semantics.selective import selective_scan_ref, ssd_ref

b, h, p, g, n = 2, 4, 3, 2, 5


def inputs(L, dtype=torch.float32):
    return (torch.randn(b, L, h, p, dtype=dtype), torch.randn(b, L, h, dtype=dtype),
            -(0.5 + torch.rand(h, dtype=dtype)), torch.randn(b, L, g, n, dtype=dtype),
            torch.randn(b, L, g, n, dtype=dtype))


def full_options(L, dtype=torch.float32):
    return dict(D=torch.randn(h, dtype=dtype), z=torch.randn(b, L, h, p, dtype=dtype),
                dt_bias=torch.randn(h, dtype=dtype), dt_softplus=True,
                initial_states=torch.randn(b, h, p, n, dtype=dtype))


# (L, chunk): chunks that divide L, that do not, chunk 1, chunk == L and chunk > L.
CHUNK_CASES = [(1, 1), (1, 4), (7, 3), (7, 7), (7, 16), (64, 16), (100, 16), (100, 1),
               (1000, 64), (1000, 100)]


@pytest.mark.parametrize("L, Q", CHUNK_CASES, ids=[f"L{L}-Q{Q}" for L, Q in CHUNK_CASES])
def test_chunked_matches_sequential(L, Q, tol):
    x, dt, A, B, C = inputs(L)
    kw = full_options(L)
    y1, s1 = ssd_ref(x, dt, A, B, C, return_final_states=True, **kw)
    y2, s2 = ssd_chunked_ref(x, dt, A, B, C, return_final_states=True, chunk_size=Q, **kw)
    torch.testing.assert_close(y2, y1, **tol[torch.float32])
    torch.testing.assert_close(s2, s1, **tol[torch.float32])


OPTION_CASES = {
    "plain": dict(),
    "D-per-channel": dict(D=(h, p)),
    "dt-limit": dict(dt_softplus=True, dt_limit=(0.05, 0.5)),
    "bias-no-softplus": dict(dt_bias=True),
    "z": dict(z=True),
}


@pytest.mark.parametrize("case", OPTION_CASES)
def test_chunked_options(case, tol):
    L = 23
    x, dt, A, B, C = inputs(L)
    dt = dt.abs()  # without softplus the step must stay positive
    spec = OPTION_CASES[case]
    kw = {k: v for k, v in spec.items() if k in ("dt_softplus", "dt_limit")}
    if "D" in spec:
        kw["D"] = torch.randn(*spec["D"])
    if "dt_bias" in spec:
        kw["dt_bias"] = torch.rand(h)
    if "z" in spec:
        kw["z"] = torch.randn(b, L, h, p)
    torch.testing.assert_close(ssd_chunked_ref(x, dt, A, B, C, chunk_size=8, **kw),
                               ssd_ref(x, dt, A, B, C, **kw), **tol[torch.float32])


@pytest.mark.parametrize("Q", [4, 5, 64])
def test_chunked_seq_idx(Q, tol):
    L = 30
    x, dt, A, B, C = inputs(L)
    # Row 0: three packed sequences with boundaries inside and at chunk edges; row 1: one.
    seq_idx = torch.tensor([[0] * 8 + [1] * 12 + [2] * 10, [0] * L])
    kw = full_options(L) | dict(seq_idx=seq_idx, return_final_states=True)
    y1, s1 = ssd_ref(x, dt, A, B, C, **kw)
    y2, s2 = ssd_chunked_ref(x, dt, A, B, C, chunk_size=Q, **kw)
    torch.testing.assert_close(y2, y1, **tol[torch.float32])
    torch.testing.assert_close(s2, s1, **tol[torch.float32])


def test_seq_idx_equals_separate_calls(tol):
    # Packing two sequences with seq_idx = running them one after another from zero state.
    x, dt, A, B, C = inputs(20)
    seq_idx = torch.tensor([[0] * 9 + [1] * 11] * b)
    packed = ssd_chunked_ref(x, dt, A, B, C, seq_idx=seq_idx, chunk_size=4)
    first = ssd_ref(x[:, :9], dt[:, :9], A, B[:, :9], C[:, :9])
    second = ssd_ref(x[:, 9:], dt[:, 9:], A, B[:, 9:], C[:, 9:])
    torch.testing.assert_close(packed, torch.cat([first, second], 1), **tol[torch.float32])


def test_ssd_ref_is_a_mamba1_scan(tol):
    # SSD = Mamba-1 with channels (h, p), A_{(h,p), n} = A_h, dt_{(h,p)} = dt_h, grouped B, C.
    L = 17
    x, dt, A, B, C = inputs(L)
    D = torch.randn(h)
    want = ssd_ref(x, dt, A, B, C, D=D, dt_softplus=True)
    u = x.reshape(b, L, h * p).transpose(1, 2)
    delta = dt.repeat_interleave(p, dim=2).transpose(1, 2)
    A1 = A.repeat_interleave(p)[:, None].expand(h * p, n)
    got = selective_scan_ref(u, delta, A1, B.permute(0, 2, 3, 1), C.permute(0, 2, 3, 1),
                             D=D.repeat_interleave(p), delta_softplus=True)
    torch.testing.assert_close(got.transpose(1, 2).reshape(b, L, h, p), want,
                               **tol[torch.float32])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision(dtype, tol):
    L = 40
    ins = inputs(L)
    kw = full_options(L)
    got = ssd_chunked_ref(*(t.to(dtype) for t in ins), chunk_size=16,
                          **{k: v.to(dtype) if torch.is_tensor(v) else v for k, v in kw.items()})
    assert got.dtype == dtype
    want = ssd_ref(*(t.to(dtype).float() for t in ins),
                   **{k: v.to(dtype).float() if torch.is_tensor(v) else v for k, v in kw.items()})
    torch.testing.assert_close(got.float(), want, **tol[dtype])


def test_gradcheck_chunked():
    L = 5
    ins = inputs(L, torch.float64)
    kw = full_options(L, torch.float64)
    names = ["D", "z", "dt_bias", "initial_states"]
    leaves = [t.clone().requires_grad_() for t in (*ins, *(kw[k] for k in names))]

    def f(x, dt, A, B, C, D, z, dt_bias, h0):
        return ssd_chunked_ref(x, dt, A, B, C, D=D, z=z, dt_bias=dt_bias, initial_states=h0,
                               dt_softplus=True, chunk_size=2)

    assert torch.autograd.gradcheck(f, leaves, fast_mode=True)


def test_rejects_bad_chunk():
    with pytest.raises(ValueError, match="chunk_size"):
        ssd_chunked_ref(*inputs(3), chunk_size=0)


# --- the module -------------------------------------------------------------------------------

def module_inputs(m, L=11):
    gn = m.groups * m.d_state
    return (torch.randn(b, L, m.d_inner), torch.randn(b, L, m.heads), torch.randn(b, L, gn),
            torch.randn(b, L, gn))


@pytest.mark.parametrize("chunk_size", [None, 4])
def test_module_matches_functional(chunk_size, tol):
    m = SelectiveSSM(12, 5, variant="ssd", heads=4, groups=2, chunk_size=chunk_size)
    assert isinstance(m, SSDSSM) and m.head_dim == 3
    x, dt, B, C = module_inputs(m)
    z = torch.randn_like(x)
    h0 = torch.randn(b, 4, 3, 5)
    y, s = m(x, dt, B, C, z=z, initial_state=h0, return_final_state=True)
    want, ws = ssd_ref(x.reshape(b, 11, 4, 3), dt, -torch.exp(m.A_log), B.reshape(b, 11, 2, 5),
                       C.reshape(b, 11, 2, 5), D=m.D, z=z.reshape(b, 11, 4, 3), dt_bias=m.dt_bias,
                       initial_states=h0, dt_softplus=True, return_final_states=True)
    torch.testing.assert_close(y, want.reshape(b, 11, 12), **tol[torch.float32])
    torch.testing.assert_close(s, ws, **tol[torch.float32])


def test_module_params_init_and_meta():
    m = SelectiveSSM(128, 16, variant="ssd")
    assert (m.heads, m.head_dim) == (2, 64)
    assert {k: tuple(v.shape) for k, v in m.named_parameters()} == {
        "A_log": (2,), "D": (2,), "dt_bias": (2,)}
    A = torch.exp(m.A_log)
    assert ((A >= 1) & (A <= 16)).all()
    meta = SelectiveSSM(128, 16, variant="ssd", heads=4, device="meta")
    assert all(p.is_meta for p in meta.parameters())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_module_low_precision(dtype, tol):
    m = SelectiveSSM(12, 5, variant="ssd", heads=4)
    ins = module_inputs(m)
    y = m(*(t.to(dtype) for t in ins))
    assert y.dtype == dtype
    torch.testing.assert_close(y.float(), m(*(t.to(dtype).float() for t in ins)), **tol[dtype])


def test_module_backward_reaches_every_parameter():
    m = SelectiveSSM(12, 5, variant="ssd", heads=4, dt_limit=(0.0, 10.0))
    m(*module_inputs(m)).square().sum().backward()
    for name, prm in m.named_parameters():
        assert prm.grad is not None and prm.grad.abs().sum() > 0, name


@pytest.mark.parametrize("kwargs, name", [
    (dict(heads=5), "heads"),
    (dict(head_dim=5), "head_dim"),
    (dict(heads=4, head_dim=4), "head_dim"),
    (dict(heads=4, groups=3), "groups"),
    (dict(heads=4, chunk_size=0), "chunk_size"),
    (dict(heads=4, dt_limit=(1.0, 0.5)), "dt_limit"),
])
def test_module_validation(kwargs, name):
    with pytest.raises(ValueError, match=name):
        SelectiveSSM(12, 4, variant="ssd", **kwargs)
    m = SelectiveSSM(12, 4, variant="ssd", heads=4)
    x, dt, B, C = module_inputs(m)
    with pytest.raises(ValueError, match="dt"):
        m(x, dt[..., :2], B, C)
