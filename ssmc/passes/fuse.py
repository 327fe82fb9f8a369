"""fuse: decide what runs inside the scan kernel instead of as separate ops.

- selective scans take softplus(delta + bias), the discretisation, the D skip and the silu(z)
  gate into the kernel (recorded in meta['fused']);
- a `gate` (y * silu(z)) that reads an SSD node's only output becomes that node's z input, so the
  gate is applied in the kernel's epilogue and the node disappears;
- a causal `conv` (convSSM's HRF read-out) that reads a PLRNN `recurrence` node's only output
  becomes that node's epilogue when the target's kernel computes it (runtime.dispatch.EPILOGUES:
  the TVM CPU kernel, while the trajectory is still in cache; the Triton kernel, from a register
  ring of its last outputs).  The conv node is kept in
  node.meta['epilogue'] so the model still builds its module under its own name (its kernel keeps
  its state_dict key) and the reference can run it where the kernel does not.
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


def _absorb_conv(g, node, backend: str | None) -> bool:
    if node.OP != "recurrence" or node.cell != "plrnn" or "epilogue" in node.meta or backend is None:
        return False
    from ssmc.passes.select_algorithm import family
    from ssmc.runtime import dispatch  # here, not at the top: the runtime imports torch

    if not dispatch.takes_epilogue(family(node), node.meta.get("algorithm"), backend, "conv"):
        return False  # a backend whose PLRNN kernel does not convolve: the conv stays a node
    y = node.outputs[0]
    users = consumers(g, y)
    if len(users) != 1 or is_graph_output(g, y):
        return False  # the trajectory itself is needed: the kernel must write it unconvolved
    conv = users[0]
    if conv.OP != "conv" or list(conv.inputs.values()) != [y]:
        return False
    node.meta["epilogue"] = conv
    node.meta.setdefault("fused_nodes", []).append(conv.name)
    remove_node(g, conv, {conv.outputs[0]: y})
    return True


def run(graph, ctx):
    from ssmc.runtime.dispatch import backend_of

    backend = backend_of(ctx.target) if ctx.target is not None else None
    for g in all_graphs(graph):
        for node in list(g.nodes):
            _absorb_gate(g, node)
            _absorb_conv(g, node, backend)
        for node in g.nodes:
            conv = node.meta.get("epilogue")
            if conv is not None:
                node.meta["fused"] = [
                    f"causal conv '{conv.name}' ({conv.length} taps"
                    f"{'' if conv.learnable else ', fixed'}) on the trajectory: direct in the "
                    f"kernel (FFT after it for long kernels or with gradients)"]
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
