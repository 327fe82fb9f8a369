"""muP width scaling (MODELS.md section 9): the role table, base-width identity, and coordinate
checks: activations and their updates stay O(1) as the widths grow, where the standard
parameterisation (SP) visibly does not.

The bound.  Three widths span a factor m = 16.  A Theta(1) quantity still moves between them by
finite-width effects (the state readout sums 4..64 terms, the CLT regime only starts), so the
checks allow max/min <= 4 = sqrt(16): the growth of the slowest divergence a wrong rule gives
over this span (a readout of uncorrelated terms, ~sqrt(width)).  Faster divergences, such as
SP's Adam updates of hidden matrices (~width, 16x here), fail it by a wide margin; the tests
assert that SP does fail, so the check can fail."""

import math

import pytest
import torch
import torch.nn as nn

from ssmc.semantics.modules_ssm import DiagonalSSM, SelectiveSSM
from ssmc.semantics.mup import apply_mup, mup_rules

BOUND = 4.0
MULTS = (1, 4, 16)


class TinyMamba(nn.Module):
    """in_proj -> (dt_proj, W_B, W_C) -> selective scan -> out_proj, widths d (channels) and N
    (states); the I/O width stays fixed, as in a model whose d_model is held constant."""

    def __init__(self, d, N, d_io=16, device=None):
        super().__init__()
        self.in_proj = nn.Linear(d_io, d, device=device)
        self.dt_proj = nn.Linear(d, d, device=device)
        self.B_proj = nn.Linear(d, N, bias=False, device=device)
        self.C_proj = nn.Linear(d, N, bias=False, device=device)
        # D off: the skip would hide the scan's own scaling; dt in [0.1, 1] puts most states in
        # the dt * n > 1 regime that the rules are derived for (see mup.py).
        self.ssm = SelectiveSSM(d, N, D=False, dt_min=0.1, dt_max=1.0, device=device)
        self.out_proj = nn.Linear(d, d_io, device=device)

    def forward(self, u):
        x = self.in_proj(u)
        self.y = self.ssm(x, self.dt_proj(x), self.B_proj(x), self.C_proj(x))
        return self.out_proj(self.y)


ROLES = {"C_proj.weight": "state_readout"}


def widths(m):
    return 64 * m, 4 * m


def test_rule_table():
    model = TinyMamba(*widths(4))
    rules = {r.name: r for r in mup_rules(model, TinyMamba(*widths(1), device="meta"), ROLES)}
    expect = {  # name: (role, init multiplier, lr multiplier) at m = 4
        "in_proj.weight": ("input", 1, 1), "in_proj.bias": ("vector", 1, 1),
        "dt_proj.weight": ("hidden", 1, 1 / 4), "dt_proj.bias": ("vector", 1, 1),
        "B_proj.weight": ("hidden", 1, 1 / 4),
        "C_proj.weight": ("state_readout", 1 / 2, 1 / 16),
        "ssm.A_log": ("vector", 1, 1), "ssm.delta_bias": ("vector", 1, 1),
        "out_proj.weight": ("output", 1 / 2, 1 / 4), "out_proj.bias": ("vector", 1, 1),
    }
    assert set(rules) == set(expect)
    for name, (role, init_mult, lr_mult) in expect.items():
        r = rules[name]
        assert (r.role, r.init_mult, r.lr_mult) == (role, pytest.approx(init_mult),
                                                     pytest.approx(lr_mult)), name


def test_base_width_is_identity():
    torch.manual_seed(0)
    model = TinyMamba(*widths(1))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    groups = apply_mup(model, base=TinyMamba(*widths(1), device="meta"), lr=0.1, roles=ROLES)
    assert [g["lr_mult"] for g in groups] == [1.0]
    assert groups[0]["lr"] == 0.1
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_apply_mup_from_base_widths():
    torch.manual_seed(0)
    m = DiagonalSSM(4, 256, parameterization="polar")
    C = m.C.detach().clone()
    groups = apply_mup(m, {"d_state": 64}, lr=1.0)
    torch.testing.assert_close(m.C.detach(), C / 2)  # x 1/sqrt(256 / 64)
    by_name = {n: g["lr_mult"] for g in groups for n in g["mup_names"]}
    assert by_name["C"] == pytest.approx(1 / 4) and by_name["nu"] == 1.0
    s4d = DiagonalSSM(4, 256)
    C = s4d.C.detach().clone()
    apply_mup(s4d, {"d_state": 64}, lr=1.0)
    assert torch.equal(s4d.C.detach(), C)  # S4D's C is per-state (see mup.py)
    with pytest.raises(ValueError, match="base_widths"):
        apply_mup(m, {"width": 64}, lr=1.0)
    with pytest.raises(ValueError, match="base"):
        apply_mup(nn.Linear(4, 4), lr=1.0)
    with pytest.raises(ValueError, match="role"):
        apply_mup(TinyMamba(*widths(1)), base=TinyMamba(*widths(1), device="meta"), lr=1.0,
                  roles={"C_proj.weight": "readout"})


def _coordinates(m, mup, steps=3, lr=1e-2):
    """std of the scan output y and the model output at init, and of their change after a few
    Adam steps on a fixed regression batch."""
    torch.manual_seed(0)
    model = TinyMamba(*widths(m))
    if mup:
        groups = apply_mup(model, base=TinyMamba(*widths(1), device="meta"), lr=lr, roles=ROLES)
    else:
        groups = [{"params": list(model.parameters()), "lr": lr}]
    g = torch.Generator().manual_seed(1)
    u, target = torch.randn(2, 16, 16, generator=g), torch.randn(2, 16, 16, generator=g)
    with torch.no_grad():
        out0 = model(u)
        y0 = model.y
    opt = torch.optim.Adam(groups)
    for _ in range(steps):
        opt.zero_grad()
        ((model(u) - target) ** 2).mean().backward()
        opt.step()
    with torch.no_grad():
        out1 = model(u)
    return {"y": y0.std().item(), "out": out0.std().item(),
            "dy": (model.y - y0).std().item(), "dout": (out1 - out0).std().item()}


def _spread(values):
    return max(values) / min(values)


def test_coordinate_check_selective():
    mup = [_coordinates(m, True) for m in MULTS]
    sp = [_coordinates(m, False) for m in MULTS]
    for key in ("y", "dy", "dout"):
        assert _spread([c[key] for c in mup]) <= BOUND, (key, mup)
    # The output layer starts at 1/sqrt(m) by design (muP's readout); it must not grow.
    assert max(c["out"] for c in mup) <= BOUND * mup[0]["out"]
    # SP: updates of the hidden matrices grow with width, far past the bound.
    assert _spread([c["dy"] for c in sp]) > 4 * BOUND
    assert _spread([c["dout"] for c in sp]) > 4 * BOUND


@pytest.mark.parametrize("mup", [True, False], ids=["mup", "sp"])
def test_coordinate_check_polar_diagonal(mup):
    # Polar (LRU-normalised) modes are all O(1): the readout over N grows like sqrt(N) under
    # SP (8x over N = 64..4096) and stays flat under muP.
    stds = []
    for N in (64, 256, 1024, 4096):
        torch.manual_seed(0)
        m = DiagonalSSM(4, N, D=False, parameterization="polar")
        if mup:
            apply_mup(m, {"d_state": 64}, lr=1e-2)
        u = torch.randn(2, 128, 4, generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            stds.append(m(u).std().item())
    if mup:
        assert _spread(stds) <= BOUND / 2, stds
    else:
        assert stds[-1] / stds[0] > BOUND and stds[-1] / stds[0] == pytest.approx(
            math.sqrt(4096 / 64), rel=0.3)
