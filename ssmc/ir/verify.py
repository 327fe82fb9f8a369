"""The verifier: unique names, no dangling inputs, no cycles, shapes and dtypes inferred node by
node, and algorithm requests a node cannot support rejected with the reason."""

from __future__ import annotations

import networkx as nx

from ssmc.errors import SpecError, did_you_mean
from ssmc.ir import dims as D
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
                raise SpecError(node.locs.get(f"inputs.{port}", node.locs["inputs"]), _field(node, f"inputs.{port}"),
                                f"'{v}' is not a graph input or the output of any node",
                                did_you_mean(v, producer))
            g.add_edge(producer[v], node.name, value=v, port=port)
    try:
        cycle = nx.find_cycle(g)
    except nx.NetworkXNoCycle:
        cycle = None
    if cycle:
        names = [a for a, _ in cycle] + [cycle[0][0]]
        # graph.g is not set yet: read the op from the local g.  Only ops can be on a cycle
        # (graph inputs have no incoming edges); point at the inputs that close it.
        first = g.nodes[names[0]]["op"]
        loc = first.locs.get("inputs", first.loc)
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
            field = e.port if e.port in node.attr_specs() or e.port == "inputs" else f"inputs.{e.port}"
            loc = node.locs.get(e.port) or node.locs.get(f"inputs.{e.port}") or node.locs.get("inputs", node.loc)
            raise SpecError(loc, _field(node, field), str(e)) from None
        for v, t in zip(node.outputs, outs):
            types[v] = t
        if getattr(node, "tied", None):
            _check_tied(graph, node, ins["x"])
    graph.types = types


def _check_tied(graph: Graph, node, x) -> None:
    """`tied: emb` shares emb's (num, dim) weight: it must be an embedding of this graph with
    num == out and dim == the input's last axis (checked here, not first by the backend)."""
    loc, field = node.locs.get("tied", node.loc), _field(node, "tied")
    emb = next((n for n in graph.nodes if n.name == node.tied), None)
    if emb is None or emb.OP != "embedding":
        raise SpecError(loc, field, f"'{node.tied}' is not an embedding node of this graph",
                        did_you_mean(node.tied, [n.name for n in graph.nodes if n.OP == "embedding"]))
    if node.out != emb.num or not D.equal(x.shape[-1], D.parse(emb.dim)):
        raise SpecError(loc, field, f"embedding '{emb.name}' is {emb.num} x {emb.dim}, but this linear maps "
                                    f"{D.render(x.shape[-1])} -> {node.out}; a tied weight needs out == num, "
                                    "in == dim")


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
