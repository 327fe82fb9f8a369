"""The verifier: unique names, no dangling inputs, no cycles, shapes and dtypes inferred node by
node, and algorithm requests a node cannot support rejected with the reason."""

from __future__ import annotations

import networkx as nx

from ssmc.errors import SpecError, did_you_mean
from ssmc.ir.graph import Graph
from ssmc.ir.ops import OPS, ShapeError

ALL_ALGORITHMS = sorted({a for c in OPS.values() for a in c.ALGORITHMS} |
                        {a for c in OPS.values() for a in c.REJECTED})


def _field(node, name: str) -> str:
    return f"nodes.{node.name}.{name}"


def _check_algorithm(node) -> None:
    a = node.algorithm
    if a == "auto" or a in node.algorithms():
        return
    loc = node.locs.get("algorithm", node.loc)
    kind = node.OP + (f" (variant {node.variant})" if hasattr(node, "variant") else "")
    if a in node.REJECTED:
        raise SpecError(loc, _field(node, "algorithm"),
                        f"'{a}' cannot run a {kind} node: {node.REJECTED[a]}; "
                        f"valid: auto, {', '.join(node.algorithms())}")
    raise SpecError(loc, _field(node, "algorithm"),
                    f"unknown algorithm {a!r} for {kind}; valid: auto, {', '.join(node.algorithms())}",
                    did_you_mean(a, list(node.algorithms()) + ["auto"]))


def _build(graph: Graph, block_inputs=None) -> None:
    """Fill graph.g with the dataflow and check names, references and cycles."""
    g = nx.DiGraph()
    producer = {}
    for v in graph.inputs:
        g.add_node(v, kind="input", op=None)
        producer[v] = v
    for node in graph.nodes:
        if node.name in g:
            raise SpecError(node.loc, _field(node, "name"), f"duplicate name '{node.name}'")
        g.add_node(node.name, kind="op", op=node)
    for node in graph.nodes:
        for v in node.outputs:
            if v in producer and producer[v] != node.name:
                raise SpecError(node.locs["outputs"], _field(node, "outputs"),
                                f"value '{v}' is already produced by '{producer[v]}'")
            if v in g and v != node.name:
                raise SpecError(node.locs["outputs"], _field(node, "outputs"),
                                f"value '{v}' has the name of another node")
            producer[v] = node.name
    for node in graph.nodes:
        for port, v in node.inputs.items():
            if v not in producer:
                raise SpecError(node.locs["inputs"], _field(node, f"inputs.{port}"),
                                f"'{v}' is not a graph input or the output of any node",
                                did_you_mean(v, producer))
            g.add_edge(producer[v], node.name, value=v, port=port)
    try:
        cycle = nx.find_cycle(g)
    except nx.NetworkXNoCycle:
        cycle = None
    if cycle:
        names = [a for a, _ in cycle] + [cycle[0][0]]
        first = graph.node(names[0]) if g.nodes[names[0]]["kind"] == "op" else None
        loc = first.loc if first else None
        raise SpecError(loc, f"nodes.{names[0]}.inputs", "cycle: " + " -> ".join(names)
                        + " (a value cannot depend on itself; recurrences belong inside SSM nodes)")
    for i, v in enumerate(graph.outputs):
        if v not in producer:
            raise SpecError(getattr(graph, "outputs_loc", None), f"outputs[{i}]",
                            f"'{v}' is not produced by any node", did_you_mean(v, producer))
    graph.g = g


def _infer(graph: Graph, ctx, block_cache: dict) -> None:
    types = dict(graph.inputs)
    for node in graph.topo_nodes():
        try:
            node.validate()
        except ShapeError as e:
            raise SpecError(node.locs.get(e.port, node.loc), _field(node, e.port), str(e)) from None
        _check_algorithm(node)
        ins = {port: types[v] for port, v in node.inputs.items()}
        if node.OP == "repeat":
            if block_cache is None:  # re-verification after a pass: the body may be rewritten
                reverify(node.body)
            else:
                node.body = _verify_block(graph, node, list(ins.values()), ctx, block_cache)
        try:
            outs = node.infer(ins)
        except ShapeError as e:
            field = e.port if e.port in node.attr_specs() else f"inputs.{e.port}"
            loc = node.locs.get(e.port, node.locs.get("inputs", node.loc))
            raise SpecError(loc, _field(node, field), str(e)) from None
        for v, t in zip(node.outputs, outs):
            types[v] = t
    graph.types = types


def _verify_block(graph: Graph, node, in_types: list, ctx, cache: dict) -> Graph:
    bdef = graph.block_defs[node.block]
    key = (node.block, tuple(map(str, in_types)))
    if key in cache:
        return cache[key]
    if len(in_types) != len(bdef["inputs"]):
        raise SpecError(node.locs["inputs"], _field(node, "inputs"),
                        f"block '{node.block}' takes {len(bdef['inputs'])} input(s) "
                        f"({', '.join(bdef['inputs'])}), got {len(in_types)}")
    body = Graph(name=node.block, dims=graph.dims, symbolic=graph.symbolic,
                 inputs=dict(zip(bdef["inputs"], in_types)), outputs=bdef["outputs"],
                 nodes=bdef["nodes"], scaling=graph.scaling, dtype=graph.dtype, file=graph.file)
    body.outputs_loc = bdef["outputs_loc"]
    body.block_defs = graph.block_defs
    _build(body)
    _infer(body, ctx, cache)
    body.blocks = {n.block: n.body for n in body.nodes if n.OP == "repeat"}
    cache[key] = body
    return body


def verify(graph: Graph, ctx=None) -> Graph:
    _build(graph)
    cache: dict = {}
    _infer(graph, ctx, cache)
    graph.blocks = {n.block: n.body for n in graph.nodes if n.OP == "repeat"}
    return graph


def reverify(graph: Graph) -> Graph:
    """Check a graph again after passes rewrote it (bodies of repeats as they are now)."""
    _build(graph)
    _infer(graph, None, None)
    return graph
