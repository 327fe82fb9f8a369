"""The drop-in ops check their arguments once, for every backend: a wrong shape, dtype, device or
a missing tensor is a ValueError that starts with the argument's name.  The reference backend is
the oracle itself; cu_seqlens means the same as running each packed sequence on its own."""

from __future__ import annotations

import re
import warnings

import pytest
import torch

from ssmc.ops import mamba_chunk_scan_combined, selective_scan_fn
from ssmc.semantics.selective import selective_scan_ref, ssd_ref

FP32 = dict(rtol=6e-4, atol=2e-3)
META = torch.device("meta")

# ---- selective_scan_fn ---------------------------------------------------------------------------
b, d, L, N = 2, 4, 5, 3


def scan_args(**over):
    g = torch.Generator().manual_seed(0)
    args = dict(u=torch.randn(b, d, L, generator=g), delta=0.5 * torch.rand(b, d, L, generator=g),
                A=-torch.rand(d, N, generator=g) - 0.1, B=torch.randn(b, N, L, generator=g),
                C=torch.randn(b, N, L, generator=g), D=torch.randn(d, generator=g),
                z=torch.randn(b, d, L, generator=g), delta_bias=torch.randn(d, generator=g))
    args.update(over)
    return args


def _raises_naming(name, fn, **kw):
    with pytest.raises(ValueError, match="^" + re.escape(name) + ":") as info:
        fn(**kw)
    assert "\n" not in str(info.value)
    return info


SCAN_BAD = [
    ("u", dict(u=None)),
    ("u", dict(u=[[1.0]])),
    ("u", dict(u=torch.randn(b, d))),
    ("u", dict(u=torch.randint(0, 3, (b, d, L)))),
    ("delta", dict(delta=None)),
    ("delta", dict(delta=torch.rand(b, d, L + 1))),
    ("delta", dict(delta=torch.rand(b, d))),
    ("delta", dict(delta=torch.ones(b, d, L, dtype=torch.int32))),
    ("delta", dict(delta=torch.rand(b, d, L, device=META))),
    ("A", dict(A=None)),
    ("A", dict(A=torch.rand(d + 1, N))),
    ("A", dict(A=torch.rand(d))),
    ("A", dict(A=torch.ones(d, N, dtype=torch.int64))),
    ("A", dict(A=torch.rand(d, N, device=META))),
    ("B", dict(B=None)),
    ("B", dict(B=torch.randn(d, N + 1))),  # time-invariant (d, N) with the wrong N
    ("B", dict(B=torch.randn(b, N, L + 1))),
    ("B", dict(B=torch.randn(b, 3, N, L))),  # 3 groups do not divide d = 4
    ("B", dict(B=torch.randn(b, 1, N + 1, L))),
    ("B", dict(B=torch.randn(N))),
    ("B", dict(B=torch.ones(b, N, L, dtype=torch.int64))),
    ("B", dict(B=torch.randn(b, N, L, device=META))),
    ("C", dict(C=None)),
    ("C", dict(C=torch.randn(b, N + 1, L))),
    ("C", dict(C=torch.randn(b, N, L, device=META))),
    ("D", dict(D=torch.randn(d + 1))),
    ("D", dict(D=torch.randn(d, 1))),
    ("D", dict(D=torch.ones(d, dtype=torch.int64))),
    ("D", dict(D=torch.randn(d, device=META))),
    ("z", dict(z=torch.randn(b, d, L - 1))),
    ("z", dict(z=torch.randn(b, d, L, device=META))),
    ("z", dict(z=torch.ones(b, d, L, dtype=torch.bool))),
    ("delta_bias", dict(delta_bias=torch.randn(d + 1))),
    ("delta_bias", dict(delta_bias=torch.randn(d, device=META))),
    ("delta_bias", dict(delta_bias=torch.randn(1, d))),
]


@pytest.mark.parametrize("name,over", SCAN_BAD, ids=[f"{n}-{i}" for i, (n, _) in enumerate(SCAN_BAD)])
def test_selective_scan_bad_argument(name, over):
    _raises_naming(name, selective_scan_fn, **scan_args(**over), backend="reference")


def test_selective_scan_bogus_backend():
    with pytest.raises(ValueError, match="^backend:.*bogus"):
        selective_scan_fn(**scan_args(), backend="bogus")


def test_selective_scan_optional_arguments_may_be_none():
    y = selective_scan_fn(**scan_args(D=None, z=None, delta_bias=None), backend="reference")
    assert y.shape == (b, d, L)


@pytest.mark.parametrize("layout", ["shared", "grouped", "time_invariant", "complex"])
def test_selective_scan_reference_backend_is_the_oracle(layout):
    over = {}
    if layout == "grouped":
        over = dict(B=torch.randn(b, 2, N, L), C=torch.randn(b, 2, N, L))
    elif layout == "time_invariant":
        over = dict(B=torch.randn(d, N), C=torch.randn(d, N))
    elif layout == "complex":
        over = dict(A=torch.complex(-torch.rand(d, N) - 0.1, torch.randn(d, N)))
    args = scan_args(**over)
    y, last = selective_scan_fn(**args, delta_softplus=True, return_last_state=True, backend="reference")
    y_ref, last_ref = selective_scan_ref(**args, delta_softplus=True, return_last_state=True)
    torch.testing.assert_close(y, y_ref, rtol=0, atol=0)
    torch.testing.assert_close(last, last_ref, rtol=0, atol=0)
    assert y.shape == (b, d, L) and last.shape == (b, d, N)


def test_selective_scan_auto_on_cpu_matches_the_oracle():
    """backend='auto' on CPU tensors runs the TVM kernel (or falls back to the reference with a
    warning when TVM is missing); either way the result is the oracle's."""
    d_, N_ = 16, 8  # the signature test_compiled's mamba does not build; keep it small
    g = torch.Generator().manual_seed(1)
    args = dict(u=torch.randn(b, d_, 33, generator=g), delta=0.5 * torch.rand(b, d_, 33, generator=g),
                A=-torch.rand(d_, N_, generator=g) - 0.1, B=torch.randn(b, N_, 33, generator=g),
                C=torch.randn(b, N_, 33, generator=g), D=torch.randn(d_, generator=g),
                z=torch.randn(b, d_, 33, generator=g), delta_bias=torch.randn(d_, generator=g))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        y = selective_scan_fn(**args, delta_softplus=True)
    torch.testing.assert_close(y, selective_scan_ref(**args, delta_softplus=True), **FP32)


# ---- selective_scan_fn with cu_seqlens (variable-length batches) ---------------------------------
PACKED_LENGTHS = [1, 3, 0, 6]  # L = 10: a one-step sequence and an empty one


def scan_packed(**over):
    """One packed row (batch 1) of the sequences PACKED_LENGTHS, B and C shared."""
    gen = torch.Generator().manual_seed(7)
    Lp = sum(PACKED_LENGTHS)
    args = dict(u=torch.randn(1, d, Lp, generator=gen),
                delta=0.5 * torch.rand(1, d, Lp, generator=gen),
                A=-torch.rand(d, N, generator=gen) - 0.1, B=torch.randn(1, N, Lp, generator=gen),
                C=torch.randn(1, N, Lp, generator=gen), D=torch.randn(d, generator=gen),
                z=torch.randn(1, d, Lp, generator=gen), delta_bias=torch.randn(d, generator=gen))
    args.update(over)
    return args


def packed_offsets(dtype=torch.int32):
    return torch.tensor([0, 1, 4, 4, 10], dtype=dtype)


def scan_one_by_one(args):
    ys, lasts, start = [], [], 0
    for n in PACKED_LENGTHS:
        piece = {k: v[..., start:start + n] if k in ("u", "delta", "z", "B", "C") else v
                 for k, v in args.items()}
        y, last = selective_scan_ref(**piece, delta_softplus=True, return_last_state=True)
        ys.append(y)
        lasts.append(last)
        start += n
    return torch.cat(ys, dim=2), torch.cat(lasts)


SCAN_CU_BAD = [
    dict(cu_seqlens=torch.tensor([0, 4, 3, 10], dtype=torch.int32)),  # not increasing
    dict(cu_seqlens=torch.tensor([0, 4, 9], dtype=torch.int32)),  # does not end at L
    dict(cu_seqlens=torch.tensor([1, 4, 10], dtype=torch.int32)),  # does not start at 0
    dict(cu_seqlens=torch.tensor([10], dtype=torch.int32)),  # no sequence
    dict(cu_seqlens=torch.tensor([0.0, 10.0])),  # wrong dtype
    dict(cu_seqlens=torch.tensor([[0, 10]], dtype=torch.int32)),  # not 1-D
    dict(cu_seqlens=torch.tensor([0, 10], dtype=torch.int32, device=META)),  # another device
]


@pytest.mark.parametrize("backend", ["reference", "auto", "triton"])
@pytest.mark.parametrize("over", SCAN_CU_BAD, ids=[str(i) for i in range(len(SCAN_CU_BAD))])
def test_selective_scan_cu_seqlens_bad(over, backend):
    _raises_naming("cu_seqlens", selective_scan_fn, **scan_packed(), **over, backend=backend)


def test_selective_scan_cu_seqlens_needs_a_packed_row():
    info = _raises_naming("cu_seqlens", selective_scan_fn, **scan_args(),
                          cu_seqlens=torch.tensor([0, 2, L]), backend="reference")
    assert "batch 2" in str(info.value)


@pytest.mark.parametrize("backend", ["reference", "auto", "triton"])
def test_selective_scan_cu_seqlens_equals_separate_sequences(backend):
    """'triton' runs the kernel through the interpreter; 'auto' on CPU tensors runs the
    reference (TVM has no variable-length kernel)."""
    args = scan_packed()
    y, last = selective_scan_fn(**args, delta_softplus=True, return_last_state=True,
                                cu_seqlens=packed_offsets(), backend=backend)
    want_y, want_last = scan_one_by_one(args)
    assert y.shape == (1, d, 10) and last.shape == (len(PACKED_LENGTHS), d, N)
    torch.testing.assert_close(y, want_y, **FP32)
    torch.testing.assert_close(last, want_last, **FP32)
    whole = selective_scan_fn(**args, delta_softplus=True, backend="reference")
    assert not torch.allclose(whole, want_y, **FP32)  # the state really restarted


def test_selective_scan_cu_seqlens_refuses_tvm():
    """TVM has no variable-length kernel: an explicit tvm backend is an error, not a run that
    ignores the sequence boundaries."""
    info = _raises_naming("cu_seqlens", selective_scan_fn, **scan_packed(),
                          cu_seqlens=packed_offsets(), backend="tvm")
    assert "tvm" in str(info.value)


def test_selective_scan_cu_seqlens_gradients():
    """The Triton kernels have no backward: 'auto' differentiates through the reference, an
    explicit 'triton' says so."""
    args = scan_packed()
    args["u"].requires_grad_(True)
    info = _raises_naming("cu_seqlens", selective_scan_fn, **args,
                          cu_seqlens=packed_offsets(), backend="triton")
    assert "backward" in str(info.value)
    y = selective_scan_fn(**args, delta_softplus=True, cu_seqlens=packed_offsets(torch.int64))
    y.sum().backward()
    assert args["u"].grad is not None and torch.isfinite(args["u"].grad).all()


# ---- mamba_chunk_scan_combined -------------------------------------------------------------------
sb, sL, h, p, g_, n = 2, 8, 2, 3, 1, 4


def ssd_args(**over):
    gen = torch.Generator().manual_seed(0)
    args = dict(x=torch.randn(sb, sL, h, p, generator=gen), dt=0.5 * torch.rand(sb, sL, h, generator=gen),
                A=-torch.rand(h, generator=gen) - 0.1, B=torch.randn(sb, sL, g_, n, generator=gen),
                C=torch.randn(sb, sL, g_, n, generator=gen), chunk_size=4, D=torch.randn(h, generator=gen),
                z=torch.randn(sb, sL, h, p, generator=gen), dt_bias=torch.randn(h, generator=gen),
                initial_states=torch.randn(sb, h, p, n, generator=gen))
    args.update(over)
    return args


SSD_BAD = [
    ("x", dict(x=None)),
    ("x", dict(x=torch.randn(sb, sL, h * p))),
    ("x", dict(x=torch.ones(sb, sL, h, p, dtype=torch.int64))),
    ("dt", dict(dt=None)),
    ("dt", dict(dt=torch.rand(sb, sL, h + 1))),
    ("dt", dict(dt=torch.rand(sb, sL))),
    ("dt", dict(dt=torch.rand(sb, sL, h, device=META))),
    ("A", dict(A=None)),
    ("A", dict(A=torch.rand(h + 1))),
    ("A", dict(A=torch.rand(h, p))),
    ("A", dict(A=torch.rand(h, device=META))),
    ("B", dict(B=None)),
    ("B", dict(B=torch.randn(sb, sL + 1, g_, n))),
    ("B", dict(B=torch.randn(sb, sL, n))),
    ("B", dict(B=torch.randn(sb, sL, 3, n), C=torch.randn(sb, sL, 3, n))),  # 3 groups, 2 heads
    ("B", dict(B=torch.randn(sb, sL, g_, n, device=META))),
    ("C", dict(C=None)),
    ("C", dict(C=torch.randn(sb, sL, g_, n + 1))),
    ("C", dict(C=torch.randn(sb, sL, g_, n, device=META))),
    ("D", dict(D=torch.randn(h + 1))),
    ("D", dict(D=torch.randn(h, p + 1))),
    ("D", dict(D=torch.randn(h, p, 1))),
    ("D", dict(D=torch.randn(h, device=META))),
    ("z", dict(z=torch.randn(sb, sL, h, p + 1))),
    ("z", dict(z=torch.randn(sb, sL, h, p, device=META))),
    ("dt_bias", dict(dt_bias=torch.randn(h + 1))),
    ("dt_bias", dict(dt_bias=torch.randn(h, device=META))),
    ("initial_states", dict(initial_states=torch.randn(sb, h, p, n + 1))),
    ("initial_states", dict(initial_states=torch.randn(h, p, n))),
    ("initial_states", dict(initial_states=torch.randn(sb, h, p, n, device=META))),
    ("seq_idx", dict(seq_idx=torch.zeros(sb, sL + 1, dtype=torch.int32))),
    ("seq_idx", dict(seq_idx=torch.zeros(sb, sL))),  # float
    ("seq_idx", dict(seq_idx=torch.zeros(sb, sL, dtype=torch.int32, device=META))),
    ("cu_seqlens", dict(cu_seqlens=torch.tensor([0, 4, sL], dtype=torch.int32))),  # batch 2
    ("chunk_size", dict(chunk_size=0)),
    ("chunk_size", dict(chunk_size=-4)),
    ("chunk_size", dict(chunk_size=2.5)),
    ("chunk_size", dict(chunk_size=None)),
    ("chunk_size", dict(chunk_size="4")),
    ("chunk_size", dict(chunk_size=True)),
    ("dt_limit", dict(dt_limit=(1.0, 0.5))),
    ("dt_limit", dict(dt_limit=None)),
    ("dt_limit", dict(dt_limit=(0.0,))),
    ("dt_limit", dict(dt_limit=(0.0, float("nan")))),
    ("dt_limit", dict(dt_limit=("a", "b"))),
]


@pytest.mark.parametrize("name,over", SSD_BAD, ids=[f"{n}-{i}" for i, (n, _) in enumerate(SSD_BAD)])
def test_ssd_bad_argument(name, over):
    _raises_naming(name, mamba_chunk_scan_combined, **ssd_args(**over), backend="reference")


def _packed(**over):
    """One packed row of three sequences (lengths 3, 4, 3) for the cu_seqlens cases."""
    gen = torch.Generator().manual_seed(5)
    Lp = 10
    args = dict(x=torch.randn(1, Lp, h, p, generator=gen), dt=0.5 * torch.rand(1, Lp, h, generator=gen),
                A=-torch.rand(h, generator=gen) - 0.1, B=torch.randn(1, Lp, g_, n, generator=gen),
                C=torch.randn(1, Lp, g_, n, generator=gen), chunk_size=4, D=torch.randn(h, p, generator=gen),
                z=torch.randn(1, Lp, h, p, generator=gen), dt_bias=torch.randn(h, generator=gen))
    args.update(over)
    return args


CU_BAD = [
    ("cu_seqlens", dict(cu_seqlens=torch.tensor([0, 3, 9], dtype=torch.int32))),  # does not end at L
    ("cu_seqlens", dict(cu_seqlens=torch.tensor([1, 3, 10], dtype=torch.int32))),  # does not start at 0
    ("cu_seqlens", dict(cu_seqlens=torch.tensor([0, 7, 3, 10], dtype=torch.int32))),  # decreasing
    ("cu_seqlens", dict(cu_seqlens=torch.tensor([10], dtype=torch.int32))),
    ("cu_seqlens", dict(cu_seqlens=torch.tensor([0.0, 10.0]))),
    ("cu_seqlens", dict(cu_seqlens=torch.tensor([[0, 10]], dtype=torch.int32))),
    ("cu_seqlens", dict(cu_seqlens=torch.tensor([0, 10], dtype=torch.int32, device=META))),
    ("seq_idx", dict(cu_seqlens=torch.tensor([0, 10], dtype=torch.int32),
                     seq_idx=torch.zeros(1, 10, dtype=torch.int32))),
]


@pytest.mark.parametrize("name,over", CU_BAD, ids=[f"{n}-{i}" for i, (n, _) in enumerate(CU_BAD)])
def test_cu_seqlens_bad(name, over):
    _raises_naming(name, mamba_chunk_scan_combined, **_packed(**over), backend="reference")


def test_ssd_bogus_backend():
    with pytest.raises(ValueError, match="^backend:.*bogus"):
        mamba_chunk_scan_combined(**ssd_args(), backend="bogus")


def test_ssd_reference_backend_is_the_oracle():
    args = ssd_args()
    chunk = args.pop("chunk_size")
    y, final = mamba_chunk_scan_combined(**args, chunk_size=chunk, dt_softplus=True, dt_limit=(0.0, 2.0),
                                         return_final_states=True, backend="reference")
    y_ref, final_ref = ssd_ref(**args, dt_softplus=True, dt_limit=(0.0, 2.0), return_final_states=True)
    torch.testing.assert_close(y, y_ref, rtol=0, atol=0)
    torch.testing.assert_close(final, final_ref, rtol=0, atol=0)
    assert y.shape == (sb, sL, h, p) and final.shape == (sb, h, p, n)


@pytest.mark.parametrize("backend", ["reference", "auto"])
@pytest.mark.filterwarnings("ignore:ssmc. no .* kernel")
def test_cu_seqlens_equals_separate_sequences(backend):
    cu = [0, 3, 7, 10]
    args = _packed()
    y = mamba_chunk_scan_combined(**args, cu_seqlens=torch.tensor(cu, dtype=torch.int32),
                                  dt_softplus=True, backend=backend)
    parts = []
    for s, e in zip(cu[:-1], cu[1:]):
        piece = dict(args)
        for k in ("x", "dt", "B", "C", "z"):
            piece[k] = args[k][:, s:e]
        parts.append(mamba_chunk_scan_combined(**piece, dt_softplus=True, backend="reference"))
    want = torch.cat(parts, dim=1)
    assert y.shape == want.shape == (1, 10, h, p)
    torch.testing.assert_close(y, want, **FP32)
    # and it is not what the unsplit row gives (the state really was reset)
    whole = mamba_chunk_scan_combined(**args, dt_softplus=True, backend="reference")
    assert not torch.allclose(whole, want, **FP32)


def test_cu_seqlens_equals_seq_idx():
    args = _packed()
    a = mamba_chunk_scan_combined(**args, cu_seqlens=torch.tensor([0, 3, 7, 10]), backend="reference")
    seq_idx = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 2, 2, 2]], dtype=torch.int32)
    b_ = mamba_chunk_scan_combined(**args, seq_idx=seq_idx, backend="reference")
    torch.testing.assert_close(a, b_, rtol=0, atol=0)
