"""The vectorisable TIR math (ssmc/codegen/tvm/tirmath.py) against float64 torch, compiled and
run the way the scan kernels use it (8-lane vector loops)."""

import pytest
import torch

pytest.importorskip("tvm")

from ssmc.codegen.tvm import math_probe as P  # noqa: E402

# Bounds a little above the measured maxima quoted in tirmath's docstring.
BOUNDS = {
    "exp2": 3e-7,
    "exp2_deg4": 3e-6,
    "exp2_deg6": 1.5e-7,
    "exp": 3e-7,
    "log": 2.5e-7,
    "softplus": 5e-7,
    "silu": 5e-7,
    "sin": 2e-7,
    "cos": 2e-7,
}


@pytest.mark.parametrize("name", sorted(BOUNDS))
def test_max_error_over_domain(name):
    assert P.max_error(name) <= BOUNDS[name]


def test_exp_saturates_instead_of_inf_or_denormal():
    x = torch.tensor([-1000.0, -100.0, -87.0, 88.0, 100.0, 1000.0])
    y = P.evaluate("exp", x)
    assert torch.isfinite(y).all()
    assert (y[:3] > 0).all() and (y[:3] < 2e-38).all()  # tiny, normal, never 0/denormal
    assert (y[3:] > 1e38).all()


def test_softplus_small_and_large_arguments():
    # log1p's rounding correction: softplus(x) ~ e**x where 1 + e**x rounds to 1
    x = torch.tensor([-80.0, -30.0, -17.0, -10.0, 0.0, 19.9, 20.0, 20.1, 80.0])
    want = torch.nn.functional.softplus(x.double())
    got = P.evaluate("softplus", x).double()
    torch.testing.assert_close(got, want, rtol=5e-7, atol=0)


def test_silu_extremes_are_finite():
    x = torch.tensor([-1e30, -100.0, 100.0, 1e30])
    y = P.evaluate("silu", x)
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y[1:3], torch.nn.functional.silu(x[1:3]))
