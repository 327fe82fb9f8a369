"""The Mamba mixers as spec text (YAML node lines), written once for everything that generates
a spec around them: the drop-in layers (ssmc.nn.Mamba / Mamba2: the mixer alone) and the
checkpoint importer (ssmc.hf.convert: the mixer inside a pre-norm residual block of an LM).

The lines use the zoo's dim names (ir/mamba.yaml, ir/mamba2.yaml): d_model, d_inner, d_state,
d_conv, dt_rank; n_heads, n_groups, conv_dim for Mamba-2.  Each function returns the node
lines without indentation, from in_proj (reading `src`) to out_proj; the caller indents them
into its `nodes:` list.
"""

from __future__ import annotations

import math


def yaml_bool(v: bool) -> str:
    return "true" if v else "false"


def yaml_float(v: float) -> str:
    return ".inf" if v == math.inf else repr(float(v))


def _dt_limit(dt_limit) -> list[str]:
    if dt_limit is None or tuple(dt_limit) == (0.0, math.inf):
        return []
    return [f"  dt_limit: [{yaml_float(dt_limit[0])}, {yaml_float(dt_limit[1])}]"]


def mamba1_mixer(src: str, *, bias: bool, conv_bias: bool, ssm_extra: tuple = ()) -> list[str]:
    """in_proj -> causal conv1d + SiLU -> x_proj -> dt_proj -> selective scan (softplus(dt +
    bias), D skip, SiLU(z) gate fused) -> out_proj.  ssm_extra: more lines for the scan node
    (e.g. "dt_min: 0.001")."""
    return [
        f"- {{name: in_proj, op: linear, inputs: [{src}], out: 2*d_inner, "
        f"bias: {yaml_bool(bias)}}}",
        "- {name: xz, op: split, inputs: [in_proj], sizes: [d_inner, d_inner], "
        "outputs: [xs, z]}",
        f"- {{name: conv1d, op: conv1d, inputs: [xs], kernel: d_conv, activation: silu, "
        f"bias: {yaml_bool(conv_bias)}}}",
        "- {name: x_proj, op: linear, inputs: [conv1d], out: dt_rank + 2*d_state, bias: false}",
        "- {name: dbc, op: split, inputs: [x_proj], sizes: [dt_rank, d_state, d_state], "
        "outputs: [dt_low, Bm, Cm]}",
        "- {name: dt_proj, op: linear, inputs: [dt_low], out: d_inner, bias: false}",
        "- name: ssm",
        "  op: selective_ssm",
        "  variant: mamba1",
        "  inputs: {x: conv1d, delta: dt_proj, B: Bm, C: Cm, z: z}",
        "  d_state: d_state",
        "  delta_bias: true      # dt_proj's bias, fused into the scan",
        "  delta_softplus: true",
        "  D: true",
        *(f"  {line}" for line in ssm_extra),
        f"- {{name: out_proj, op: linear, inputs: [ssm], out: d_model, bias: {yaml_bool(bias)}}}",
    ]


def mamba2_mixer(src: str, *, bias: bool, conv_bias: bool, chunk_size: int, dt_limit=None,
                 norm: str | None = "gnorm", norm_fields: str = "",
                 ssm_extra: tuple = ()) -> list[str]:
    """in_proj -> (z, xBC, dt); causal conv1d + SiLU on xBC -> SSD (scalar A per head,
    softplus(dt + dt_bias), D skip) -> y * SiLU(z) [-> an RMSNorm node named `norm` (None: no
    norm), with `norm_fields` (e.g. ", eps: 1e-5") added to its mapping] -> out_proj."""
    last = "gated"
    gate = ["- {name: gated, op: gate, inputs: [ssm, z], fn: silu}"]
    if norm:
        gate.append(f"- {{name: {norm}, op: rmsnorm, inputs: [gated]{norm_fields}}}")
        last = norm
    return [
        f"- {{name: in_proj, op: linear, inputs: [{src}], out: d_inner + conv_dim + n_heads, "
        f"bias: {yaml_bool(bias)}}}",
        "- {name: zxbcdt, op: split, inputs: [in_proj], sizes: [d_inner, conv_dim, n_heads], "
        "outputs: [z, xBC, dt]}",
        f"- {{name: conv1d, op: conv1d, inputs: [xBC], kernel: d_conv, activation: silu, "
        f"bias: {yaml_bool(conv_bias)}}}",
        "- {name: xbc, op: split, inputs: [conv1d], "
        "sizes: [d_inner, n_groups*d_state, n_groups*d_state], outputs: [xs, Bm, Cm]}",
        "- name: ssm",
        "  op: selective_ssm",
        "  variant: ssd",
        "  inputs: {x: xs, dt: dt, B: Bm, C: Cm}",
        "  heads: n_heads",
        "  groups: n_groups",
        "  d_state: d_state",
        f"  chunk_size: {int(chunk_size)}",
        "  delta_bias: true        # dt_bias",
        "  delta_softplus: true",
        *_dt_limit(dt_limit),
        *(f"  {line}" for line in ssm_extra),
        *gate,
        f"- {{name: out_proj, op: linear, inputs: [{last}], out: d_model, "
        f"bias: {yaml_bool(bias)}}}",
    ]


def indent(lines: list[str], spaces: int) -> str:
    """The lines as one text block, each indented by `spaces`, ending with a newline."""
    pad = " " * spaces
    return "".join(f"{pad}{line}\n" for line in lines)
