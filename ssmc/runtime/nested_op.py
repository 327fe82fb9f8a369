"""The nested-recursion tree (RIR / BBT-GRC) as torch.library custom ops.

    ssmc::nested_tree(x2, w1, b1, w2, b2, ln_w, ln_b, eps, lengths, L, chunk, inner, kind, keep)
        -> (roots (b, d), store (total, d), acts (2, merges, 4d))
    ssmc::nested_tree_bwd(grad_roots, store, acts, w1, w2, ln_w, ln_b, eps, lengths, L, chunk,
                          inner) -> (dx2, dw1, db1, dw2, db2, dln_w, dln_b)

x2 is the (b * L, d) leaves; the plan (ssmc.codegen.composite.nested.build_plan) depends only
on (lengths, L, chunk, inner), so the fake implementations size every output from those
integers without running anything.  `keep` (gradients wanted) makes the forward keep the node
store and the activations the backward needs; without it they come back empty and the
forward runs its faster inference path (GELU fused into the first GEMM).  kind: where the
GRC's elementwise parts run (tvm / triton / torch, as nested_tree's epilogue).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ssmc.codegen.composite import nested as tree
from ssmc.semantics.nested import GRCWeights


def _plan(lengths, L, chunk, inner):
    return tree.build_plan(tuple(int(n) for n in lengths), int(L), int(chunk), inner)


@torch.library.custom_op("ssmc::nested_tree", mutates_args=())
def nested_tree_op(x2: Tensor, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor, ln_w: Tensor,
                   ln_b: Tensor, eps: float, lengths: list[int], L: int, chunk: int, inner: str,
                   kind: str, keep: bool) -> tuple[Tensor, Tensor, Tensor]:
    plan = _plan(lengths, L, chunk, inner)
    w = GRCWeights(w1, b1, w2, b2, ln_w, ln_b, eps)
    if not keep:
        return tree.run_plan(x2, plan, w, kind), x2.new_empty(0), x2.new_empty(0)
    acts = x2.new_empty(2, plan.merges, w1.shape[0])
    roots, store = tree.run_plan(x2, plan, w, kind, acts)
    return roots, store, acts


@nested_tree_op.register_fake
def _nested_tree_fake(x2, w1, b1, w2, b2, ln_w, ln_b, eps, lengths, L, chunk, inner, kind, keep):
    plan = _plan(lengths, L, chunk, inner)
    d = x2.shape[1]
    roots = x2.new_empty(len(lengths), d)
    if not keep:
        return roots, x2.new_empty(0), x2.new_empty(0)
    return roots, x2.new_empty(plan.total, d), x2.new_empty(2, plan.merges, w1.shape[0])


@torch.library.custom_op("ssmc::nested_tree_bwd", mutates_args=())
def nested_tree_bwd_op(grad_roots: Tensor, store: Tensor, acts: Tensor, w1: Tensor, w2: Tensor,
                       ln_w: Tensor, ln_b: Tensor, eps: float, lengths: list[int], L: int,
                       chunk: int, inner: str
                       ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    plan = _plan(lengths, L, chunk, inner)
    return tuple(t.contiguous() for t in tree.tree_backward(
        grad_roots.contiguous(), store, acts, w1, w2, ln_w, ln_b, plan, eps))


@nested_tree_bwd_op.register_fake
def _nested_tree_bwd_fake(grad_roots, store, acts, w1, w2, ln_w, ln_b, eps, lengths, L, chunk,
                          inner):
    d = ln_w.shape[0]
    return (store.new_empty(len(lengths) * L, d), torch.empty_like(w1),
            w1.new_empty(w1.shape[0]), torch.empty_like(w2), w2.new_empty(w2.shape[0]),
            torch.empty_like(ln_w), torch.empty_like(ln_b))


def _setup(ctx, inputs, output):
    x2, w1, b1, w2, b2, ln_w, ln_b, eps, lengths, L, chunk, inner, kind, keep = inputs
    _, store, acts = output
    # store and acts get no gradient: leave theirs None rather than materialising zeros the
    # size of the activations (2 x merges x 4d: a 16 MB fill per step at L1024 d256)
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(store, acts, w1, w2, ln_w, ln_b)
    ctx.args = (eps, list(lengths), L, chunk, inner)
    ctx.keep = keep


def _backward(ctx, grad_roots, _grad_store, _grad_acts):
    if not ctx.keep:
        raise RuntimeError("ssmc::nested_tree: the forward ran with keep=False (no gradients "
                           "were wanted), so it kept nothing to differentiate")
    if grad_roots is None:  # nothing reached the roots (grads are not materialised)
        return (None,) * 14
    store, acts, w1, w2, ln_w, ln_b = ctx.saved_tensors
    grads = torch.ops.ssmc.nested_tree_bwd(grad_roots, store, acts, w1, w2, ln_w, ln_b,
                                           *ctx.args)
    return (*grads, None, None, None, None, None, None, None)


nested_tree_op.register_autograd(_backward, setup_context=_setup)
