"""ssmc.runtime.gemm.linear: F.linear's meaning whichever GEMM library runs it."""

import pytest
import torch
import torch.nn.functional as F

from ssmc.runtime import gemm


@pytest.mark.parametrize("shape,n,bias", [((1, 300, 64), 96, True), ((2, 70, 16), 48, False),
                                          ((5, 33), 7, True), ((1, 1, 64), 32, True)])
def test_linear_is_f_linear(shape, n, bias):
    x = torch.randn(*shape)
    w = torch.randn(n, shape[-1])
    b = torch.randn(n) if bias else None
    torch.testing.assert_close(gemm.linear(x, w, b), F.linear(x, w, b), rtol=1e-5, atol=1e-5)
    xs = torch.randn(*shape[:-1], shape[-1] + 5)[..., 5:]  # a strided view, as the mixers pass
    torch.testing.assert_close(gemm.linear(xs, w, b), F.linear(xs, w, b), rtol=1e-5, atol=1e-5)


def test_gradients_and_other_dtypes_take_f_linear():
    x = torch.randn(200, 16, requires_grad=True)
    w = torch.randn(8, 16, requires_grad=True)
    gemm.linear(x, w).sum().backward()
    assert x.grad is not None and w.grad is not None
    x64, w64 = torch.randn(200, 16, dtype=torch.float64), torch.randn(8, 16, dtype=torch.float64)
    y = gemm.linear(x64, w64)
    assert y.dtype == torch.float64
    torch.testing.assert_close(y, F.linear(x64, w64))
