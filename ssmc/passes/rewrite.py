"""Small graph edits shared by the passes (not a pass itself)."""

from __future__ import annotations

from ssmc.ir import dims as D


def remove_node(graph, node, replacement: dict) -> None:
    """Drop `node`; every read of its outputs reads `replacement[output]` instead.  The dataflow
    graph and the types are rebuilt and checked again."""
    from ssmc.ir.verify import reverify

    graph.nodes = [n for n in graph.nodes if n is not node]
    for n in graph.nodes:
        n.inputs = {p: replacement.get(v, v) for p, v in n.inputs.items()}
    graph.outputs = [replacement.get(v, v) for v in graph.outputs]
    reverify(graph)


def consumers(graph, value: str) -> list:
    out = [n for n in graph.nodes if value in n.inputs.values()]
    return out


def is_graph_output(graph, value: str) -> bool:
    return value in graph.outputs


def concrete(graph, value: str, bindings: dict) -> tuple:
    """The value's shape with run-time dims bound to the shape bucket.  A run-time dim the
    bucket leaves out is the user's error (an SsmcError naming it), not an internal one."""
    from ssmc.errors import SsmcError

    try:
        return tuple(D.as_int(e, bindings) for e in graph.types[value].shape)
    except D.Unbound as u:
        raise SsmcError(f"value '{value}': run-time dimension '{u.name}' needs a value for the "
                        f"shape bucket (e.g. --dim {u.name}=8)") from None


def all_graphs(graph):
    """The graph and every repeated block body in it (passes rewrite each)."""
    yield graph
    for n in graph.nodes:
        if n.OP == "repeat" and n.body is not None:
            yield from all_graphs(n.body)
