"""The rmsnorm backward kernel (codegen/tvm/rmsnorm_bwd_tir.py) through its differentiable entry
point codegen/composite/rmsnorm_train.py: the gradients of x, weight and the gate z against
float64 autograd of the reference (semantics.glue.RMSNorm, on x * silu(z) when gated) on rows
of 1 to 4097, D from 1 to 300, groups, strided and 3-D inputs; only the requested gradients;
clear errors for what the kernels do not take."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ssmc.codegen.composite.rmsnorm_train import rmsnorm_train
from ssmc.codegen.tvm.rmsnorm_bwd import rmsnorm_bwd
from ssmc.semantics.glue import RMSNorm

EPS = 1e-5


def reference(x, weight, z, eps, groups, gy):
    """float64 autograd of the reference module: (y, dx, dweight, dz or None)."""
    m = RMSNorm(x.shape[-1], eps=eps, groups=groups, dtype=torch.float64)
    with torch.no_grad():
        m.weight.copy_(weight)
    x64 = x.detach().double().requires_grad_()
    z64 = None if z is None else z.detach().double().requires_grad_()
    y = m(x64 * F.silu(z64) if z is not None else x64)
    y.backward(gy.double())
    return y.detach(), x64.grad, m.weight.grad, None if z is None else z64.grad


def operands(shape, D, gated, strided, seed):
    """x (rows of different scales), weight, z (pre-activations across silu's range) and gy;
    strided: x and z are column slices of wider tensors (as in_proj's outputs are)."""
    g = torch.Generator().manual_seed(seed)
    wide = D + 5 if strided else D

    def rn(*s):
        return torch.randn(*s, generator=g)

    scale = torch.exp(0.7 * rn(*shape, 1))
    x = (rn(*shape, wide) * scale)[..., 2:2 + D] if strided else rn(*shape, D) * scale
    z = None
    if gated:
        z = 3 * rn(*shape, wide)
        z = z[..., 1:1 + D] if strided else z
    return x, rn(D), z, rn(*shape, D)


def grads_close(got, want, tol, name, sum_over_rows=False):
    scale = max(1.0, want.abs().max().item() / 10) if sum_over_rows else 1.0
    torch.testing.assert_close(got.double(), want, rtol=tol[torch.float32]["rtol"],
                               atol=tol[torch.float32]["atol"] * scale, msg=name)


# (leading shape: rows as (b, L) or (rows,), D, groups, gated, strided)
CASES = [
    ((1,), 1, 1, False, False),
    ((1, 1), 64, 2, True, True),
    ((1,), 256, 1, True, False),
    ((7,), 7, 1, True, True),
    ((1, 7), 300, 4, False, True),
    ((7,), 256, 1, False, False),
    ((1000,), 256, 1, False, True),
    ((2, 500), 256, 1, True, True),
    ((1000,), 300, 2, True, False),
    ((4, 250), 64, 4, False, False),
    ((1000,), 1, 1, True, False),
    ((4097,), 7, 1, False, True),
    ((17, 241), 256, 4, True, True),
    ((4097,), 300, 1, True, False),
]


@pytest.mark.parametrize("shape,D,groups,gated,strided", CASES)
def test_gradients_match_reference(shape, D, groups, gated, strided, tol):
    x, w, z, gy = operands(shape, D, gated, strided, seed=len(CASES) * D + groups)
    y_ref, dx_ref, dw_ref, dz_ref = reference(x, w, z, EPS, groups, gy)
    xs = x.requires_grad_()
    ws = w.clone().requires_grad_()
    zs = None if z is None else z.requires_grad_()
    y = rmsnorm_train(xs, ws, EPS, z=zs, groups=groups)
    assert y.shape == x.shape and y.dtype == torch.float32
    grads_close(y, y_ref, tol, "y")
    y.backward(gy)
    grads_close(xs.grad, dx_ref, tol, "dx")
    grads_close(ws.grad, dw_ref, tol, "dweight", sum_over_rows=True)
    if gated:
        grads_close(zs.grad, dz_ref, tol, "dz")


def test_strided_output_gradient_and_determinism(tol):
    """gy a column slice (read in place), and dweight's chunk partials summed in a fixed order:
    two calls agree bit for bit."""
    x, w, z, _ = operands((3, 700), 256, True, True, seed=1)
    gy = torch.randn(3, 700, 300)[..., 10:266]
    _, dx_ref, dw_ref, dz_ref = reference(x, w, z, EPS, 2, gy)
    dx, dw, dz = rmsnorm_bwd(gy, x, w, EPS, z=z, groups=2)
    grads_close(dx, dx_ref, tol, "dx")
    grads_close(dz, dz_ref, tol, "dz")
    grads_close(dw, dw_ref, tol, "dweight", sum_over_rows=True)
    dx2, dw2, dz2 = rmsnorm_bwd(gy, x, w, EPS, z=z, groups=2)
    assert torch.equal(dx, dx2) and torch.equal(dw, dw2) and torch.equal(dz, dz2)


@pytest.mark.parametrize("D", [1, 8])
def test_expanded_output_gradient(D, tol):
    """y.sum().backward(): autograd passes gy expanded from a scalar (stride 0 everywhere)."""
    x, w, z, _ = operands((3, 5), D, True, False, seed=3)
    _, dx_ref, dw_ref, dz_ref = reference(x, w, z, EPS, 1, torch.ones(3, 5, D))
    xs, ws, zs = x.requires_grad_(), w.clone().requires_grad_(), z.requires_grad_()
    rmsnorm_train(xs, ws, EPS, z=zs).sum().backward()
    grads_close(xs.grad, dx_ref, tol, "dx")
    grads_close(zs.grad, dz_ref, tol, "dz")
    grads_close(ws.grad, dw_ref, tol, "dweight", sum_over_rows=True)


def test_only_the_requested_gradients(tol):
    x, w, z, gy = operands((2, 100), 64, True, False, seed=2)
    _, dx_ref, _, _ = reference(x, w, z, EPS, 1, gy)
    xs = x.clone().requires_grad_()
    frozen = w.clone()  # a frozen weight and gate: only x gets a gradient
    y = rmsnorm_train(xs, frozen, EPS, z=z)
    y.backward(gy)
    assert frozen.grad is None and z.grad is None and not frozen.requires_grad
    grads_close(xs.grad, dx_ref, tol, "dx")
    ws = w.clone().requires_grad_()  # only the weight
    rmsnorm_train(x, ws, EPS).sum().backward()
    assert x.grad is None and ws.grad is not None and ws.grad.shape == (64,)
    with torch.no_grad():
        assert not rmsnorm_train(x, ws, EPS).requires_grad


@pytest.mark.parametrize("arg", ["x", "weight", "z"])
@pytest.mark.parametrize("bad", ["dtype", "device"])
def test_wrong_dtype_or_device_raises(arg, bad):
    args = {"x": torch.randn(4, 8), "weight": torch.randn(8), "z": torch.randn(4, 8)}
    t = args[arg]
    args[arg] = t.double() if bad == "dtype" else torch.empty(t.shape, device="meta")
    with pytest.raises(ValueError, match=f"{arg} must be a float32 CPU tensor"):
        rmsnorm_train(args["x"], args["weight"], EPS, z=args["z"])


def test_wrong_shapes_raise():
    with pytest.raises(ValueError, match="weight must have shape"):
        rmsnorm_train(torch.randn(4, 8), torch.randn(7), EPS)
    with pytest.raises(ValueError, match="z must have x's shape"):
        rmsnorm_train(torch.randn(4, 8), torch.randn(8), EPS, z=torch.randn(4, 4))
    with pytest.raises(ValueError, match="groups"):
        rmsnorm_train(torch.randn(4, 8), torch.randn(8), EPS, groups=3)
