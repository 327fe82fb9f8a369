"""The parameter-free glue ops as a spec uses them (reshape, transpose, split, concat, mul, mean,
activations): the reference model built from the graph computes what the ops mean, and the
shapes the verifier inferred are the shapes that come out.  The zoo uses few of these ops, so
they are checked here on their own."""

import textwrap

import torch

from ssmc.ir import dims as D
from ssmc.ir.spec import load_spec
from ssmc.semantics.model import build_reference

GLUE = textwrap.dedent("""\
    name: glue
    dims:
      d: 6
      h: 2
      hd: d / h
    inputs:
      x: {shape: [batch, seqlen, d]}
    nodes:
      - {name: heads, op: reshape, inputs: [x], shape: [h, hd]}
      - {name: swapped, op: transpose, inputs: [heads], perm: [0, 1, 3, 2]}
      - {name: flat, op: reshape, inputs: [swapped], shape: [d]}
      - {name: parts, op: split, inputs: [flat], sizes: [2, 4], outputs: [p, q]}
      - {name: joined, op: concat, inputs: [q, p]}
      - {name: prod, op: mul, inputs: [joined, x]}
      - {name: squashed, op: tanh, inputs: [prod]}
      - {name: grown, op: exp, inputs: [squashed]}
      - {name: pool, op: mean, inputs: [grown], axis: 1}
    outputs: [grown, pool]
    """)


def by_hand(x):
    b, L, d = x.shape
    flat = x.reshape(b, L, 2, 3).permute(0, 1, 3, 2).reshape(b, L, d)
    joined = torch.cat([flat[..., 2:], flat[..., :2]], dim=-1)
    grown = torch.exp(torch.tanh(joined * x))
    return grown, grown.mean(dim=1)


def test_glue_ops_compute_what_they_mean():
    model = build_reference(load_spec(GLUE))
    assert sum(p.numel() for p in model.parameters()) == 0
    x = torch.randn(2, 5, 6)
    for got, want in zip(model(x), by_hand(x)):
        torch.testing.assert_close(got, want)


def test_inferred_shapes_are_the_real_shapes():
    g = load_spec(GLUE)
    model = build_reference(g)
    env = {"batch": 2, "seqlen": 5}
    x = torch.randn(2, 5, 6)
    for name, out in zip(g.outputs, model(x)):
        want = tuple(D.as_int(s, env) for s in g.types[name].shape)
        assert tuple(out.shape) == want, name
