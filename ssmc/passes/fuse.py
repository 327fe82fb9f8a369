"""fuse: decide what runs inside the scan kernel instead of as separate ops.

- selective scans take softplus(delta + bias), the discretisation, the D skip and the silu(z)
  gate into the kernel (recorded in meta['fused']);
- a `gate` (y * silu(z)) that reads an SSD node's only output becomes that node's z input, so the
  gate is applied in the kernel's epilogue and the node disappears.
"""

from __future__ import annotations

from ssmc.passes.rewrite import all_graphs, consumers, is_graph_output, remove_node


def _absorb_gate(g, node) -> bool:
    if node.OP != "selective_ssm" or node.variant != "ssd" or "z" in node.inputs or node.final_state:
        return False
    y = node.outputs[0]
    users = consumers(g, y)
    if len(users) != 1 or is_graph_output(g, y):
        return False
    gate = users[0]
    if gate.OP != "gate" or gate.fn != "silu" or gate.inputs["x"] != y or gate.inputs["z"] == y:
        return False  # y * silu(y) would make the node read its own output
    node.inputs["z"] = gate.inputs["z"]
    node.meta.setdefault("fused_nodes", []).append(gate.name)
    remove_node(g, gate, {gate.outputs[0]: y})
    return True


def run(graph, ctx):
    for g in all_graphs(graph):
        for node in list(g.nodes):
            _absorb_gate(g, node)
        for node in g.nodes:
            if node.OP != "selective_ssm" or node.variant == "dense":
                continue
            fused = []
            if node.delta_bias or node.delta_softplus:
                fused.append("softplus(delta + bias)" if node.delta_softplus else "delta + bias")
            fused.append("discretisation exp(delta A)")
            if node.D:
                fused.append("D skip")
            if "z" in node.inputs:
                fused.append("silu(z) gate")
            if node.start:
                fused.append("START perturbation (training only)")
            node.meta["fused"] = fused
    return graph
