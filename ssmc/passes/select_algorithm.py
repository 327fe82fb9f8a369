"""select_algorithm: per SSM node, the algorithm with the lowest estimated time on the target
for the shape bucket (ssmc.costmodel), unless the spec asked for one or a tuned record says which
one measured fastest."""

from __future__ import annotations

from ssmc import costmodel as cm
from ssmc.passes.rewrite import all_graphs, concrete


def _work(g, node, algorithm, b, target=None):
    x = node.inputs.get("x") or node.inputs.get("u") or node.inputs.get("s")
    return node_work(node, concrete(g, x, b), algorithm, target)


def node_work(node, shape, algorithm, target=None) -> cm.Work:
    """The cost model's work of `node` running `algorithm` on an input of concrete `shape`
    (on `target`, where the kernels' parallelism differs by backend)."""
    op = node.OP
    if op == "selective_ssm":
        B, L, d = shape
        if node.variant == "mamba1":
            return cm.selective_mamba1(B, L, d, node.d_state, algorithm, cplx=node.complex)
        if node.variant == "ssd":
            h = node.heads
            return cm.selective_ssd(B, L, h, d // h, node.d_state, algorithm, chunk=node.chunk_size or 64)
        return cm.selective_dense(B, L, d, node.d_state, node.block, algorithm)
    if op == "diagonal_ssm":
        B, L, d = shape
        return cm.diagonal(B, L, d, node.d_state, algorithm, cplx=node.complex)
    if op == "ssm2d":
        B, T, V, d = shape
        return cm.ssm2d(B, T, V, d, node.d_state, algorithm,
                        cell_parallel=target is None or target.is_gpu)
    if op == "nested_recursion":
        B, L, d = shape
        return cm.nested(B, L, d, node.chunk or cm.NESTED_DEFAULT_CHUNK, algorithm, node.inner, node.beam)
    if op == "recurrence":
        B, L, d_in = shape
        return cm.recurrence(B, L, d_in, node.latent, algorithm)
    raise KeyError(op)


def family(node) -> str:
    return node.OP + (f"/{node.variant}" if getattr(node, "variant", None) else "")


def unsupported(node, algorithm: str, target) -> str | None:
    """Why the target's kernels cannot run `algorithm` for this node (None: they can).  The
    cost model must not pick such an algorithm: the kernel would refuse it at run time.
    (No such rule at present: the Triton associative scan takes a complex A since it scans
    (re, im) pairs.)"""
    return None


def no_kernel(node, algorithms, target) -> dict:
    """{algorithm: why} for those of `algorithms` the target's backend has no kernel for, when
    it has one for some other algorithm of the family: picking one would run the eager
    reference.  A family with no kernel there runs the reference whatever is picked: {}."""
    if target is None:
        return {}
    from ssmc.runtime import dispatch  # here, not at the top: the runtime imports torch

    backend, fam = dispatch.backend_of(target), family(node)
    have = dispatch.algorithms_with_kernel(fam, backend)
    if not have:
        return {}
    return {a: f"no {backend} kernel (it would run the eager reference)"
            for a in algorithms if a not in have}


def candidates(node, target=None) -> tuple:
    algs = node.algorithms()
    if node.OP == "ssm2d":
        algs = tuple(a for a in algs if a != "axis")  # valid only when the couplings vanish
    return tuple(a for a in algs if unsupported(node, a, target) is None)


def _choose_chunk(g, node, ctx):
    """A nested_recursion whose spec leaves `chunk` open gets the cost model's k; the lowered
    node carries it (the compiled model's tree shape), node.meta says why."""
    B, L, d = concrete(g, node.inputs["x"], ctx.bindings)
    k, times = cm.choose_nested_chunk(B, L, d, ctx.target, node.inner, node.beam)
    node.chunk = k
    node.meta["chunk"] = k
    node.meta["chunk_why"] = (f"cost model: k={k} ({times[k]:.1f} us; "
                              + ", ".join(f"{c}: {t:.0f}" for c, t in sorted(times.items())) + ")")


def _cost_why(best, ests, excluded) -> str:
    why = f"cost model: {best.time_us:.1f} us, {best.bound}-bound"
    cheaper = [e.algorithm for e in ests if e.time_us < best.time_us and e.algorithm in excluded]
    return why + (f" (cheaper but excluded: {', '.join(cheaper)})" if cheaper else "")


def run(graph, ctx):
    for g in all_graphs(graph):
        for node in g.nodes:
            if not node.ALGORITHMS or node.OP == "conv":
                continue
            if node.OP == "nested_recursion" and node.chunk is None:
                _choose_chunk(g, node, ctx)
            algs = candidates(node, ctx.target)
            ests = [cm.estimate(_work(g, node, a, ctx.bindings, ctx.target), ctx.target, a)
                    for a in algs]
            # unsupported ones are not costed at all; kernel-less ones stay in the cost table
            # (what they would cost) but are not chosen.  `explain` says why, for both.
            excluded = {a: why for a in node.algorithms()
                        if (why := unsupported(node, a, ctx.target)) is not None}
            excluded.update(no_kernel(node, algs, ctx.target))
            if excluded:
                node.meta["excluded"] = excluded
            node.meta["costs"] = [e.row() for e in sorted(ests, key=lambda e: e.time_us)]
            choosable = [e for e in ests if e.algorithm not in excluded] or ests
            best = min(choosable, key=lambda e: e.time_us)
            record = ctx.records.lookup(family(node), node, g, ctx) if ctx.records is not None else None
            if node.algorithm != "auto":
                node.meta["algorithm"], node.meta["why"] = node.algorithm, "requested in the spec"
            elif record and record.get("algorithm") in {e.algorithm for e in choosable}:
                node.meta["algorithm"] = record["algorithm"]
                node.meta["why"] = f"tuned record ({record.get('source', 'measured')})"
            else:
                node.meta["algorithm"] = best.algorithm
                node.meta["why"] = _cost_why(best, ests, excluded)
    return graph
