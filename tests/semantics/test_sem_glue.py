"""Glue ops: causal depthwise conv vs explicit left padding and the defining sum, mamba weight
loading, long conv, norms vs their formulas, the activation table, split/concat, dtypes,
gradients, meta construction and validation."""

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from ssmc.semantics.glue import (ACTIVATIONS, CausalConv1d, LayerNorm, LongConv, RMSNorm,
                                 activation, causal_conv1d, concat_last, split_last)
from ssmc.semantics.recurrence import hrf_double_gamma


def conv_left_padded(x, weight, bias):
    """Depthwise conv with k - 1 explicit zeros on the left, no padding inside conv1d."""
    k = weight.shape[-1]
    xt = F.pad(x.transpose(1, 2), (k - 1, 0))
    return F.conv1d(xt, weight, bias, groups=x.shape[-1]).transpose(1, 2)


def conv_by_definition(x, weight, bias):
    """y[t] = bias + sum_j w[j] x[t - (k-1) + j] (zero before t = 0), as a loop over t."""
    b, L, c = x.shape
    k = weight.shape[-1]
    w = weight.reshape(c, k)
    y = torch.zeros_like(x) + (0 if bias is None else bias)
    for t in range(L):
        for j in range(k):
            src = t - (k - 1) + j
            if src >= 0:
                y[:, t] += w[:, j] * x[:, src]
    return y


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("k", [1, 2, 4])
@pytest.mark.parametrize("L", [1, 3, 17])
def test_causal_conv1d_matches_left_padding(L, k, bias):
    c = 5
    m = CausalConv1d(c, k, bias=bias).double()
    x = torch.randn(2, L, c, dtype=torch.float64)
    y = m(x)
    assert y.shape == x.shape
    torch.testing.assert_close(y, conv_left_padded(x, m.weight, m.bias))
    torch.testing.assert_close(y, conv_by_definition(x, m.weight, m.bias))


def test_causal_conv1d_loads_mamba_conv_weights():
    """mamba's conv1d is nn.Conv1d(c, c, k, groups=c, padding=k-1) on (b, c, L), first L kept."""
    c, k, L = 6, 4, 11
    ref = nn.Conv1d(c, c, k, groups=c, padding=k - 1)
    m = CausalConv1d(c, k)
    m.load_state_dict(ref.state_dict())
    x = torch.randn(2, L, c)
    want = ref(x.transpose(1, 2))[..., :L].transpose(1, 2)
    torch.testing.assert_close(m(x), want)
    torch.testing.assert_close(causal_conv1d(x, m.weight, m.bias, "silu"), F.silu(want))
    torch.testing.assert_close(causal_conv1d(x, m.weight[:, 0], m.bias), want)  # (c, k) weight


def test_causal_conv1d_is_causal():
    m = CausalConv1d(3, 4)
    x = torch.randn(1, 10, 3)
    x2 = x.clone()
    x2[:, 6:] = 7.0
    torch.testing.assert_close(m(x2)[:, :6], m(x)[:, :6])


@pytest.mark.parametrize("L", [1, 7, 100])
def test_long_conv_fft_matches_direct_and_hrf_init(L):
    c, K = 3, 20
    f = LongConv(c, K, init="hrf", method="fft", tr=1.5).double()
    d = LongConv(c, K, init="random", method="direct").double()
    torch.testing.assert_close(f.kernel, hrf_double_gamma(1.5, K, dtype=torch.float64).expand(c, K))
    d.kernel.data.copy_(f.kernel.data + 0.01 * torch.randn(c, K, dtype=torch.float64))
    f.kernel.data.copy_(d.kernel.data)
    x = torch.randn(2, L, c, dtype=torch.float64)
    torch.testing.assert_close(f(x), d(x), rtol=1e-10, atol=1e-10)
    # a length-K kernel is a causal conv1d with the flipped taps
    torch.testing.assert_close(f(x), causal_conv1d(x, f.kernel.flip(-1)), rtol=1e-10, atol=1e-10)


def test_long_conv_random_init_scale():
    m = LongConv(64, 256, init="random")
    assert abs(float(m.kernel.detach().std()) - 1 / 16) < 0.01


@pytest.mark.parametrize("shape", [(2, 7, 16), (3, 1, 5)])
def test_rmsnorm_matches_formula(shape):
    dim = shape[-1]
    m = RMSNorm(dim).double()
    with torch.no_grad():
        m.weight.normal_()
    x = torch.randn(*shape, dtype=torch.float64)
    # ||x|| / sqrt(dim) is the root mean square
    rms = torch.linalg.vector_norm(x, dim=-1, keepdim=True) / math.sqrt(dim)
    want = x / torch.sqrt(rms ** 2 + 1e-5) * m.weight
    torch.testing.assert_close(m(x), want)


def test_layernorm_is_nn_layernorm():
    m = LayerNorm(8)
    ref = nn.LayerNorm(8)
    with torch.no_grad():
        m.weight.normal_()
        m.bias.normal_()
    ref.load_state_dict(m.state_dict())
    x = torch.randn(2, 5, 8)
    torch.testing.assert_close(m(x), ref(x))
    assert isinstance(m, nn.LayerNorm)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_returns_input_dtype(dtype, tol):
    x = torch.randn(2, 9, 6)
    xl = x.to(dtype)
    for m in (CausalConv1d(6, 4), LongConv(6, 12), RMSNorm(6), LayerNorm(6)):
        y = m(xl)
        assert y.dtype == dtype, type(m).__name__
        torch.testing.assert_close(y.float(), m(xl.float()), **tol[dtype])


def test_activation_table():
    assert set(ACTIVATIONS) == {"silu", "gelu", "relu", "sigmoid", "tanh", "softplus",
                                "identity", "exp"}
    x = torch.linspace(-4, 4, 41, dtype=torch.float64)
    sig = 1 / (1 + torch.exp(-x))
    want = {
        "silu": x * sig, "gelu": 0.5 * x * (1 + torch.erf(x / math.sqrt(2))),
        "relu": torch.clamp(x, min=0), "sigmoid": sig,
        "tanh": (torch.exp(x) - torch.exp(-x)) / (torch.exp(x) + torch.exp(-x)),
        "softplus": torch.log1p(torch.exp(x)), "identity": x, "exp": torch.exp(x),
    }
    for name, fn in ACTIVATIONS.items():
        torch.testing.assert_close(fn(x), want[name], msg=name)
        assert activation(name) is fn
    with pytest.raises(ValueError, match="did you mean 'silu'"):
        activation("slu")


def test_split_concat():
    x = torch.randn(2, 3, 10)
    a, b, c = split_last(x, [2, 3, 5])
    assert (a.shape[-1], b.shape[-1], c.shape[-1]) == (2, 3, 5)
    torch.testing.assert_close(concat_last([a, b, c]), x)
    torch.testing.assert_close(b, x[..., 2:5])
    with pytest.raises(ValueError, match="sizes"):
        split_last(x, [2, 3])


def test_gradcheck_float64():
    x = torch.randn(1, 6, 3, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, 1, 4, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(causal_conv1d, (x, w, bias), fast_mode=True)
    m = RMSNorm(3).double()
    wt = torch.randn(3, dtype=torch.float64, requires_grad=True)
    call = lambda x, wt: torch.func.functional_call(m, {"weight": wt}, (x,))  # noqa: E731
    assert torch.autograd.gradcheck(call, (x, wt), fast_mode=True)


def test_backward_reaches_every_parameter():
    x = torch.randn(2, 8, 4)
    for m in (CausalConv1d(4, 3), LongConv(4, 6), LongConv(4, 6, method="direct"), RMSNorm(4),
              LayerNorm(4)):
        y = m(x)
        (y * torch.randn_like(y)).sum().backward()
        for name, p in m.named_parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0, (type(m).__name__, name)


def test_meta_construction():
    with torch.device("meta"):
        mods = [CausalConv1d(8, 4), LongConv(8, 32), RMSNorm(8), LayerNorm(8)]
    counts = [sum(p.numel() for p in m.parameters()) for m in mods]
    assert counts == [8 * 4 + 8, 8 * 32, 8, 16]
    assert all(p.is_meta for m in mods for p in m.parameters())
    assert CausalConv1d(8, 4, bias=False, device="meta").bias is None


@pytest.mark.parametrize("ctor,name", [
    (lambda: CausalConv1d(0, 4), "channels"), (lambda: CausalConv1d(4, 0), "kernel"),
    (lambda: LongConv(4, 0), "length"), (lambda: LongConv(4, 8, init="zeros"), "init"),
    (lambda: LongConv(4, 8, method="winograd"), "method"), (lambda: LongConv(4, 8, tr=0), "tr"),
    (lambda: RMSNorm(0), "dim"), (lambda: RMSNorm(4, eps=0), "eps"),
])
def test_validation(ctor, name):
    with pytest.raises(ValueError, match=name):
        ctor()
