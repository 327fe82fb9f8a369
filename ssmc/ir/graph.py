"""The graph: op nodes in a networkx.DiGraph, with named values, symbolic dims and dtypes."""

from __future__ import annotations

from dataclasses import dataclass, field

import networkx as nx

from ssmc.ir import dims as D

DTYPES = ("float32", "float16", "bfloat16", "float64", "complex64", "int64", "int32", "bool")
FLOAT_DTYPES = ("float32", "float16", "bfloat16", "float64")


@dataclass(frozen=True)
class TensorType:
    shape: tuple  # of dims.Expr
    dtype: str = "float32"

    @property
    def rank(self) -> int:
        return len(self.shape)

    def __str__(self) -> str:
        return f"{self.dtype}[{', '.join(D.render(s) for s in self.shape)}]"


@dataclass
class Graph:
    """A verified spec: `nodes` in file order, `g` the dataflow DiGraph over node names
    (graph inputs are nodes too, op 'input'), `types` the inferred type of every value."""

    name: str
    dims: dict  # name -> int (resolved constants)
    symbolic: tuple  # free dims bound at run time (batch, seqlen, ...)
    inputs: dict  # value name -> TensorType
    outputs: list
    nodes: list  # of ops.Op, in file order
    blocks: dict = field(default_factory=dict)  # block name -> Graph
    description: str = ""
    scaling: str = "standard"
    dtype: str = "float32"
    file: str = "<spec>"
    g: nx.DiGraph = field(default_factory=nx.DiGraph)
    types: dict = field(default_factory=dict)  # value name -> TensorType

    def node(self, name: str):
        return self.g.nodes[name]["op"]

    def topo_nodes(self) -> list:
        """Ops in a dependency order (file order where free)."""
        order = {n.name: i for i, n in enumerate(self.nodes)}
        names = nx.lexicographical_topological_sort(self.g, key=lambda n: order.get(n, -1))
        return [self.g.nodes[n]["op"] for n in names if self.g.nodes[n]["kind"] == "op"]

    def producer(self) -> dict:
        """value name -> node name that produces it (graph inputs produce themselves)."""
        out = {v: v for v in self.inputs}
        for n in self.nodes:
            for v in n.outputs:
                out[v] = n.name
        return out

    def walk(self, prefix: str = ""):
        """Every op, recursing into repeated blocks: yields (qualified name, op, graph)."""
        for n in self.topo_nodes():
            yield prefix + n.name, n, self
            if n.OP == "repeat":
                yield from n.body.walk(f"{prefix}{n.name}.*.")

    def node_kinds(self) -> list:
        seen = []
        for _, n, _ in self.walk():
            kind = n.OP if getattr(n, "variant", None) is None else f"{n.OP}/{n.variant}"
            if kind not in seen:
                seen.append(kind)
        return seen
