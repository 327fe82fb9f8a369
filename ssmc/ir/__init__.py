"""The SSM IR: op nodes (dataclasses) in a networkx graph, loaded from YAML specs and verified."""

from ssmc.ir.graph import Graph, TensorType  # noqa: F401
from ssmc.ir.spec import load_spec, load_zoo  # noqa: F401
