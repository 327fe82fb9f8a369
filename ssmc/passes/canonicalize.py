"""canonicalize: fold what the spec wrote long-hand into the forms later passes match.

- an `identity` activation disappears;
- a `silu` that reads a conv1d whose only reader it is becomes the conv's activation (the
  conv + silu prologue is one kernel);
Dims are already constants (the reader resolved them); run-time dims stay symbolic.
"""

from __future__ import annotations

from ssmc.passes.rewrite import all_graphs, consumers, is_graph_output, remove_node


def run(graph, ctx):
    for g in all_graphs(graph):
        for node in list(g.nodes):
            if node.OP == "identity":
                remove_node(g, node, {node.outputs[0]: node.inputs["x"]})
        for node in list(g.nodes):
            if node.OP != "silu":
                continue
            src_value = node.inputs["x"]
            src = next((n for n in g.nodes if src_value in n.outputs), None)
            if (src is not None and src.OP == "conv1d" and src.activation == "identity"
                    and len(consumers(g, src_value)) == 1 and not is_graph_output(g, src_value)):
                src.activation = "silu"
                src.meta["folded"] = [node.name]
                remove_node(g, node, {node.outputs[0]: src_value})
    return graph
