"""legalize: what each backend can express.

- Triton has no complex type: complex states become (re, im) pairs of real ones.
- dtype policy: fp16/bf16 inputs and outputs, fp32 state and accumulation, for every SSM node.
"""

from __future__ import annotations

from ssmc.passes.rewrite import all_graphs


def run(graph, ctx):
    io = ctx.dtype or graph.dtype
    for g in all_graphs(graph):
        for node in g.nodes:
            if not node.ALGORITHMS:
                continue
            node.meta["dtype"] = {"io": io, "state": "float32", "accumulate": "float32"}
            is_complex = bool(getattr(node, "complex", False)) and getattr(node, "variant", "") != "ssd"
            if is_complex and ctx.backend.startswith("triton"):
                node.meta["complex"] = "real pairs (re, im)"
            elif is_complex:
                node.meta["complex"] = "native complex64"
    return graph
