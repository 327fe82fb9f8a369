"""The TVM Mamba-2 SSD scan (selective-scan builder, scalar A per head) against
ssmc.semantics.selective.ssd_ref."""

import math

import pytest
import torch

pytest.importorskip("tvm")

from ssmc.codegen.tvm.build import KernelCache  # noqa: E402
from ssmc.codegen.tvm.ssd import ssd_scan  # noqa: E402
from ssmc.semantics.selective import ssd_ref  # noqa: E402

from ssmc.codegen.tvm.guard_page import after_guard_page  # noqa: E402


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return KernelCache(root=tmp_path_factory.mktemp("tvm_ssd_cache"))


def inputs(b=2, L=64, h=4, p=16, g=2, n=16, dtype=torch.float32):
    gen = torch.Generator().manual_seed(7)

    def rn(*s):
        return torch.randn(*s, generator=gen)

    x, dt = rn(b, L, h, p).to(dtype), (0.5 * rn(b, L, h)).to(dtype)
    A = -torch.rand(h, generator=gen) * 2
    B, C = rn(b, L, g, n).to(dtype), rn(b, L, g, n).to(dtype)
    return (x, dt, A, B, C), dict(D=rn(h), z=rn(b, L, h, p).to(dtype),
                                  dt_bias=torch.rand(h, generator=gen),
                                  initial_states=rn(b, h, p, n))


def check(args, kw, tol, cache, dtype=torch.float32):
    y, final = ssd_scan(*args, **kw, return_final_states=True, cache=cache)
    y_ref, final_ref = ssd_ref(*args, **kw, return_final_states=True)
    assert y.dtype == y_ref.dtype
    torch.testing.assert_close(y, y_ref, **tol[dtype])
    torch.testing.assert_close(final, final_ref, **tol[torch.float32])


def test_all_options(tol, cache):
    for L in (1, 7, 300):  # one build serves every length
        args, kw = inputs(L=L)
        check(args, dict(kw, dt_softplus=True), tol, cache)


def test_plain_per_channel_d_seq_idx_and_dt_limit(tol, cache):
    args, _ = inputs(L=100, h=8, p=8, g=1, n=64)
    b = 2
    seq_idx = torch.cat([torch.zeros(b, 30), torch.ones(b, 45), 2 * torch.ones(b, 25)], 1)
    kw = dict(D=torch.randn(8, 8), seq_idx=seq_idx.long(), dt_softplus=True,
              dt_limit=(0.01, 0.3))
    check(args, kw, tol, cache)
    x, dt, A, B, C = args
    check((x, dt.abs(), A, B, C), {}, tol, cache)  # no softplus: dt must be >= 0 (stable)
    with after_guard_page(seq_idx.int()) as sg:  # l = 0 must not read seq_idx[-1]
        check(args, dict(kw, seq_idx=sg), tol, cache)


def test_half_inputs(tol, cache):
    for dtype in (torch.float16, torch.bfloat16):
        args, kw = inputs(L=50, dtype=dtype)
        check(args, dict(kw, dt_softplus=True), tol, cache, dtype=dtype)


@pytest.mark.parametrize("arg,value,expect", [
    ("x", torch.randn(2, 10, 4), "(b, L, h, p)"),
    ("dt", torch.randn(2, 10, 3), "(b, L, h)=(2, 10, 4)"),
    ("A", torch.randn(5), "(h,)=(4,)"),
    ("B", torch.randn(2, 10, 3, 16), "g dividing h=4"),
    ("D", torch.randn(4, 3), "(h, p)=(4, 16)"),
    ("seq_idx", torch.zeros(2, 10), "dtype"),
    ("dt_limit", (0.1,), "pair"),
])
def test_bad_arguments_name_the_argument(arg, value, expect):
    args, kw = inputs(L=10)
    call = dict(zip(["x", "dt", "A", "B", "C"], args), **kw)
    call[arg] = value
    with pytest.raises(ValueError) as err:
        ssd_scan(**call)
    assert f" {arg} must be" in str(err.value) and expect in str(err.value), str(err.value)


def test_dt_limit_default_is_unclamped():
    assert math.isinf(ssd_scan.__defaults__[6][1])
