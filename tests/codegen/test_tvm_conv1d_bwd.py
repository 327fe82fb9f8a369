"""The TVM backward of the causal depthwise conv1d (+ SiLU) and the training entry point
(ssmc.codegen.composite.causal_conv_train) against torch autograd of
ssmc.semantics.glue.causal_conv1d in float64."""

import pytest
import torch

pytest.importorskip("tvm")

from ssmc.codegen.composite.causal_conv_train import causal_conv1d_train  # noqa: E402
from ssmc.codegen.tvm import causal_conv_bwd as cbwd  # noqa: E402
from ssmc.codegen.tvm.config import Config  # noqa: E402
from ssmc.codegen.tvm.guard_page import after_guard_page  # noqa: E402
from ssmc.semantics.glue import causal_conv1d as conv_ref  # noqa: E402


def _operands(b, L, c, k, has_bias, two_d_weight=False):
    x = torch.randn(b, L, c)
    w = torch.randn(c, k) if two_d_weight else torch.randn(c, 1, k)
    return x, w, (torch.randn(c) if has_bias else None), torch.randn(b, L, c)


def _oracle(x, w, bias, act, gy):
    """float64 autograd of the reference: (y, dx, dw, dbias or None)."""
    leaves = [t.detach().double().requires_grad_() if t is not None else None
              for t in (x, w, bias)]
    y = conv_ref(*leaves, "silu" if act == "silu" else None)
    y.backward(gy.double())
    return (y.detach(),) + tuple(t.grad if t is not None else None for t in leaves)


def _close(got, want, tol, name):
    """fp32 tolerance, atol scaled by the gradient's magnitude (dw / dbias are sums over all the
    steps of all the rows, as kernelutil.assert_param_grads_close)."""
    assert got is not None and got.dtype == torch.float32 and got.shape == want.shape, name
    scale = max(1.0, want.abs().max().item() / 10)
    torch.testing.assert_close(got, want.float(), rtol=tol[torch.float32]["rtol"],
                               atol=tol[torch.float32]["atol"] * scale, msg=name)


@pytest.mark.parametrize("b,L,c,k,has_bias,act", [
    (1, 1, 5, 4, True, "silu"),
    (3, 7, 384, 3, False, "silu"),
    (1, 1000, 100, 4, True, "silu"),       # 100 channels: blocks of the default + a remainder
    (3, 4097, 5, 2, True, "identity"),
    (3, 1000, 384, 4, True, "silu"),
    (1, 7, 1, 4, False, "identity"),
    (3, 1, 384, 2, True, "identity"),
    (2, 2, 40, 4, True, "silu"),           # L < k - 1: no step of the main loop
    (1, 4097, 1, 3, False, "silu"),
    (2, 7, 5, 1, True, "silu"),            # k = 1: no window
])
def test_grads_match_reference(b, L, c, k, has_bias, act, tol):
    x, w, bias, gy = _operands(b, L, c, k, has_bias, two_d_weight=(c == 5))
    y_ref, dx_ref, dw_ref, db_ref = _oracle(x, w, bias, act, gy)
    leaves = [t.clone().requires_grad_() if t is not None else None for t in (x, w, bias)]
    y = causal_conv1d_train(*leaves, activation=act)
    _close(y.detach(), y_ref, tol, "y")
    y.backward(gy)
    _close(leaves[0].grad, dx_ref, tol, "dx")
    _close(leaves[1].grad, dw_ref, tol, "dweight")
    if has_bias:
        _close(leaves[2].grad, db_ref, tol, "dbias")


def test_strided_x_and_gy_read_in_place(tol):
    """x a column slice of a wider tensor (in_proj's output), gy a strided view too."""
    b, L, c, k = 2, 300, 48, 4
    xz = torch.randn(b, L, 3 * c)
    w, bias = torch.randn(c, 1, k), torch.randn(c)
    gyz = torch.randn(b, L, 2 * c)
    x, gy = xz[:, :, c:2 * c], gyz[:, :, :c]
    _, dx_ref, dw_ref, db_ref = _oracle(x, w, bias, "silu", gy)
    dx, dw, db = cbwd.causal_conv1d_bwd(gy, x, w, bias, "silu")
    _close(dx, dx_ref, tol, "dx")
    _close(dw, dw_ref, tol, "dweight")
    _close(db, db_ref, tol, "dbias")
    # through autograd: the gradient lands in the wide tensor's columns
    xz_leaf = xz.clone().requires_grad_()
    causal_conv1d_train(xz_leaf[:, :, c:2 * c], w, bias).backward(gy)
    _close(xz_leaf.grad[:, :, c:2 * c], dx_ref, tol, "dx (slice)")
    assert not xz_leaf.grad[:, :, :c].any() and not xz_leaf.grad[:, :, 2 * c:].any()


@pytest.mark.parametrize("config", [Config(channel_block=8, vector_width=4, threads=2),
                                    Config(channel_block=4, vector_width=4, threads=0)])
def test_config_blocks_and_remainder(config, tol):
    """Several vectors per block, a remainder block (13 = 8 + 5, 3 * 4 + 1), tasks cut into
    `threads` chunks; the config is shared by the forward and the backward."""
    x, w, bias, gy = _operands(3, 50, 13, 4, True)
    y_ref, dx_ref, dw_ref, db_ref = _oracle(x, w, bias, "silu", gy)
    leaves = [t.clone().requires_grad_() for t in (x, w, bias)]
    y = causal_conv1d_train(*leaves, config=config)
    _close(y.detach(), y_ref, tol, "y")
    y.backward(gy)
    for t, want, name in zip(leaves, (dx_ref, dw_ref, db_ref), ("dx", "dweight", "dbias")):
        _close(t.grad, want, tol, name)


def test_never_reads_before_the_sequence(tol):
    b, L, c, k = 1, 2, 512, 4  # the initial window reaches x[-2], x[-1]
    x, w, bias, gy = _operands(b, L, c, k, True)
    _, dx_ref, dw_ref, db_ref = _oracle(x, w, bias, "silu", gy)
    with after_guard_page(x) as xg, after_guard_page(gy) as gyg:
        dx, dw, db = cbwd.causal_conv1d_bwd(gyg, xg, w, bias, "silu")  # segfaults if it does
    _close(dx, dx_ref, tol, "dx")
    _close(dw, dw_ref, tol, "dweight")
    _close(db, db_ref, tol, "dbias")


def test_only_requested_grads(monkeypatch, tol):
    sigs = []
    real = cbwd.bwd_kernel

    def spy(sig, *a, **kw):
        sigs.append(sig)
        return real(sig, *a, **kw)

    monkeypatch.setattr(cbwd, "bwd_kernel", spy)
    x, w, bias, gy = _operands(2, 30, 24, 4, True)
    _, dx_ref, dw_ref, db_ref = _oracle(x, w, bias, "silu", gy)

    # weight and bias frozen: dx only, and the kernel skips the parameter partials
    xl = x.clone().requires_grad_()
    causal_conv1d_train(xl, w, bias).backward(gy)
    assert sigs[-1].grad_x and not sigs[-1].grad_params
    assert w.grad is None and bias.grad is None
    _close(xl.grad, dx_ref, tol, "dx")

    # x a constant, only the weight trained: no dx written
    wl = w.clone().requires_grad_()
    causal_conv1d_train(x, wl, bias).backward(gy)
    assert not sigs[-1].grad_x and sigs[-1].grad_params
    assert x.grad is None and bias.grad is None
    _close(wl.grad, dw_ref, tol, "dweight")

    # only the bias: the wrapper returns no weight gradient
    bl = bias.clone().requires_grad_()
    dx, dw, db = cbwd.causal_conv1d_bwd(gy, x, w, bl, "silu", grad_x=False, grad_weight=False)
    assert dx is None and dw is None
    _close(db, db_ref, tol, "dbias")
    causal_conv1d_train(x, w, bl).backward(gy)
    _close(bl.grad, db_ref, tol, "dbias")


def test_empty_sequence():
    x = torch.zeros(2, 0, 8, requires_grad=True)
    w = torch.randn(8, 1, 4, requires_grad=True)
    bias = torch.randn(8, requires_grad=True)
    y = causal_conv1d_train(x, w, bias)
    assert y.shape == (2, 0, 8)
    y.sum().backward()
    assert not w.grad.any() and not bias.grad.any() and x.grad.shape == x.shape


@pytest.mark.parametrize("arg,value,expect", [
    ("x", torch.randn(2, 8, 16, dtype=torch.float64), "float32"),
    ("weight", torch.randn(16, 1, 4, dtype=torch.float16), "float32"),
    ("bias", torch.randn(16, device="meta"), "CPU"),
    ("x", [1.0, 2.0], "torch.Tensor"),
    ("activation", "gelu", "one of"),
])
def test_bad_arguments_name_the_argument(arg, value, expect):
    call = dict(x=torch.randn(2, 8, 16), weight=torch.randn(16, 1, 4), bias=torch.randn(16),
                activation="silu")
    call[arg] = value
    with pytest.raises(ValueError) as err:
        causal_conv1d_train(**call)
    assert f" {arg} must be" in str(err.value) and expect in str(err.value), str(err.value)


def test_bwd_shape_mismatch_names_gy():
    with pytest.raises(ValueError, match="gy"):
        cbwd.causal_conv1d_bwd(torch.randn(2, 9, 16), torch.randn(2, 8, 16),
                               torch.randn(16, 1, 4), None, "silu")
