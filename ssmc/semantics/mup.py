"""muP width scaling for SSMs (MODELS.md section 9): init multipliers and Adam learning-rate
multipliers, relative to a base model whose shapes define width 1.

The rules (ssmc's; the feature-learning paper's exact table could not be checked, so these
follow from a signal-propagation argument of the same kind and are tested by a coordinate
check, tests/semantics/test_sem_mup.py).  A parameter's *fan-in* is the axes its forward pass
contracts over; a *width* is any axis whose size differs from the base model's;
m_in = fan_in / base fan_in and m_N = N / base N (1 for axes that are not widths).

| role          | parameters                                       | init std x  | Adam lr x    |
|---------------|--------------------------------------------------|-------------|--------------|
| vector        | biases, D, A_log / A_im / A_imag, log_dt, nu,    | 1           | 1            |
|               | phi, delta_bias / dt_bias, S4D's B, any 0/1-D    |             |              |
|               | tensor, S4D's C in the s4d parameterisation      |             |              |
| input         | a matrix whose fan-in is not a width (in_proj    | 1           | 1            |
|               | from a fixed d_model, a depthwise conv)           |             |              |
| hidden        | width fan-in and width fan-out (d -> d           | 1           | 1 / m_in     |
|               | projections, W_B: d -> N, dense A_k, C_proj)      |             |              |
| output        | width fan-in, fixed fan-out (out_proj to a fixed | 1/sqrt(m_in)| 1 / m_in     |
|               | d_model; S4D's C in the polar parameterisation)  |             |              |
| state_readout | W_C, the projection making C_t (N rows from d)   | 1/sqrt(m_N) | 1/(m_in m_N) |

"init std x" multiplies the standard parameterisation's init (std ~ 1/sqrt(fan_in)), so the
model at base widths is unchanged.  Why:

* h = W x with W ~ 1/sqrt(fan_in) has O(1) coordinates (input, hidden).  A readout into a
  fixed width sums fan_in uncorrelated terms whose number grows: muP's output init
  1/fan_in, i.e. 1/sqrt(m_in) relative to SP.
* Under Adam an update moves every entry by O(lr) and, after a few steps, aligns with the
  input, so Delta W x = O(lr * fan_in): lr / m_in keeps it O(1).  Vectors act elementwise:
  lr x 1.
* The state axis N of a selective SSM (Mamba-1): y_t = <C_t, h_t> sums N terms.  With a fixed
  step dt and A_n = -(n+1), every state with dt n >> 1 holds only the current token
  (h_n ~ dt B_n x_t), so as N grows almost all N terms are O(1) and uncorrelated at init:
  y grows like sqrt(N) under SP, hence W_C's init 1/sqrt(m_N), and its aligned update is
  summed over N states, hence lr / (m_in m_N).  W_B needs nothing extra: each h_n reads one B_n.
* S4D (time-invariant): with ZOH or bilinear, Bbar_n = (Abar_n - 1)/A_n B shrinks like 1/|A_n|
  once dt |A_n| > 1, so sum_n |x_n|^2 converges as N grows for S4D-Lin/-Real: the readout
  stays O(1) with C ~ N(0, 1), and C is a vector (x 1, x 1).  (S4D-Inv/-LegS put frequencies
  ~N^2 into the init itself; their readout still grows slowly, about N^(1/4) from N = 64 to
  1024, and is not corrected.)  The polar / LRU parameterisation normalises every mode to
  O(1) (gamma = sqrt(1 - r^2)), so there C is an output over N.

``apply_mup`` rescales a model in place and returns optimizer param groups.  Roles come from
``roles`` (full parameter name -> role or (role, fan_in_axes[, state_axes])), then from the
owning module's ``mup_rules`` (local name -> (role, fan_in_axes[, state_axes])), then from the
shapes: < 2-D -> vector; else fan-in = axes 1.. (nn.Linear / conv weights), fan-out = axis 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn

__all__ = ["ROLES", "MupRule", "mup_rules", "apply_mup"]

ROLES = ("vector", "input", "hidden", "output", "state_readout")


@dataclass(frozen=True)
class MupRule:
    """The decision for one parameter: its role and the multipliers derived from it."""

    name: str
    role: str
    m_in: float
    m_state: float
    init_mult: float
    lr_mult: float


def _ratio(shape, base_shape, axes) -> float:
    num = math.prod(shape[a] for a in axes)
    den = math.prod(base_shape[a] for a in axes)
    return num / den


def _spec(name, p, owner, roles):
    """(role, fan_in_axes, state_axes) for parameter ``name`` (owner: its module)."""
    local = name.rsplit(".", 1)[-1]
    spec = (roles or {}).get(name)
    if spec is None:
        spec = getattr(owner, "mup_rules", {}).get(local)
    if spec is None:
        if p.dim() < 2:
            return "vector", (), ()
        return None, tuple(range(1, p.dim())), ()
    if isinstance(spec, str):
        spec = (spec,)
    role = spec[0]
    if role not in ROLES:
        raise ValueError(f"{name}: unknown muP role {role!r} (one of {ROLES})")
    fan_in = tuple(spec[1]) if len(spec) > 1 else tuple(range(1, p.dim()))
    state = tuple(spec[2]) if len(spec) > 2 else ((0,) if role == "state_readout" else ())
    return role, fan_in, state


def _multipliers(role, m_in, m_state):
    return {
        "vector": (1.0, 1.0),
        "input": (1.0, 1.0),
        "hidden": (1.0, 1.0 / m_in),
        "output": (1.0 / math.sqrt(m_in), 1.0 / m_in),
        "state_readout": (1.0 / math.sqrt(m_state), 1.0 / (m_in * m_state)),
    }[role]


def mup_rules(model: nn.Module, base: nn.Module, roles=None) -> list[MupRule]:
    """The per-parameter muP decisions for ``model`` against ``base`` (same architecture at
    base widths; build it on device="meta", it is only read for shapes)."""
    base_shapes = {n: tuple(p.shape) for n, p in base.named_parameters()}
    owners = {n: m for n, m in model.named_modules()}
    out = []
    for name, p in model.named_parameters():
        if name not in base_shapes:
            raise ValueError(f"base model has no parameter {name!r}")
        shape, bshape = tuple(p.shape), base_shapes[name]
        if len(shape) != len(bshape):
            raise ValueError(f"{name}: shape {shape} and base shape {bshape} differ in rank")
        owner = owners[name.rsplit(".", 1)[0]] if "." in name else model
        role, fan_in, state = _spec(name, p, owner, roles)
        m_in = _ratio(shape, bshape, fan_in) if fan_in else 1.0
        m_state = _ratio(shape, bshape, state) if state else 1.0
        if role is None:  # infer from which axes are widths
            fan_out_wide = shape[0] != bshape[0]
            role = "input" if m_in == 1.0 else ("hidden" if fan_out_wide else "output")
        init_mult, lr_mult = _multipliers(role, m_in, m_state)
        out.append(MupRule(name, role, m_in, m_state, init_mult, lr_mult))
    return out


def apply_mup(model: nn.Module, base_widths: dict | None = None, *, lr: float, base=None,
              roles=None) -> list[dict]:
    """Rescale ``model``'s init in place (muP, relative to base widths) and return Adam param
    groups ``[{"params": [...], "lr": lr * lr_mult, "lr_mult": ..., "mup_names": [...]}]``.

    Either ``base_widths`` (constructor arguments that change, e.g. {"d_state": 16}; the model
    must be an ssmc module recording its ``_ssmc_config``) or ``base`` (a model at base widths,
    ideally on device="meta") says what width 1 is.
    """
    if base is None:
        config = getattr(model, "_ssmc_config", None)
        if config is None or base_widths is None:
            raise ValueError("apply_mup needs base=<model at base widths>, or base_widths for "
                             "an ssmc module")
        unknown = set(base_widths) - set(config)
        if unknown:
            raise ValueError(f"base_widths: {sorted(unknown)} are not constructor arguments "
                             f"of {type(model).__name__}")
        base = type(model)(**{**config, **base_widths}, device="meta")
    params = dict(model.named_parameters())
    groups: dict[float, dict] = {}
    with torch.no_grad():
        for rule in mup_rules(model, base, roles):
            p = params[rule.name]
            if rule.init_mult != 1.0 and not p.is_meta:
                p.mul_(rule.init_mult)
            g = groups.setdefault(rule.lr_mult, {"params": [], "lr": lr * rule.lr_mult,
                                                 "lr_mult": rule.lr_mult, "mup_names": []})
            g["params"].append(p)
            g["mup_names"].append(rule.name)
    return list(groups.values())
