"""The TVM causal depthwise conv1d (+ SiLU) against ssmc.semantics.glue.causal_conv1d."""

import pytest
import torch

pytest.importorskip("tvm")

from ssmc.codegen.tvm.build import KernelCache  # noqa: E402
from ssmc.codegen.tvm.conv1d import causal_conv1d  # noqa: E402
from ssmc.semantics.glue import causal_conv1d as conv_ref  # noqa: E402

from ssmc.codegen.tvm.guard_page import after_guard_page  # noqa: E402


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return KernelCache(root=tmp_path_factory.mktemp("tvm_conv_cache"))


@pytest.mark.parametrize("b,L,c,k", [(2, 300, 100, 4), (1, 3, 7, 4), (2, 513, 64, 3),
                                     (1, 5, 16, 1)])
@pytest.mark.parametrize("activation", ["silu", None])
def test_matches_reference(b, L, c, k, activation, tol, cache):
    x, w, bias = torch.randn(b, L, c), torch.randn(c, 1, k), torch.randn(c)
    for bb in (bias, None):
        got = causal_conv1d(x, w, bb, activation, cache=cache)
        torch.testing.assert_close(got, conv_ref(x, w, bb, activation), **tol[torch.float32])


def test_half_inputs_and_2d_weight(tol, cache):
    x, w, bias = torch.randn(2, 40, 16), torch.randn(16, 4), torch.randn(16)
    for dtype in (torch.float16, torch.bfloat16):
        got = causal_conv1d(x.to(dtype), w, bias, cache=cache)
        assert got.dtype == dtype
        torch.testing.assert_close(got, conv_ref(x.to(dtype), w, bias, "silu"), **tol[dtype])


def test_never_reads_before_the_sequence(cache):
    x = torch.randn(1, 64, 512)
    w, bias = torch.randn(512, 1, 4), torch.randn(512)
    with after_guard_page(x) as xg:
        got = causal_conv1d(xg, w, bias, cache=cache)  # segfaults on a read before x
    torch.testing.assert_close(got, conv_ref(x, w, bias, "silu"))


@pytest.mark.parametrize("arg,value,expect", [
    ("x", torch.randn(2, 8), "(b, L, c)"),
    ("weight", torch.randn(9, 1, 4), "c=16"),
    ("bias", torch.randn(15), "(c,)=(16,)"),
    ("activation", "gelu", "one of"),
])
def test_bad_arguments_name_the_argument(arg, value, expect):
    call = dict(x=torch.randn(2, 8, 16), weight=torch.randn(16, 1, 4), bias=torch.randn(16),
                activation="silu")
    call[arg] = value
    with pytest.raises(ValueError) as err:
        causal_conv1d(**call)
    assert f" {arg} must be" in str(err.value) and expect in str(err.value), str(err.value)
