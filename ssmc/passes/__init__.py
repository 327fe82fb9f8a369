"""The pass pipeline.  PIPELINE is the one place where the order lives; each pass is
`run(graph, ctx) -> graph` in a module of its own, and `ssmc explain` prints the graph after each.
"""

from __future__ import annotations

import copy
import os

from ssmc.passes import canonicalize, fuse, legalize, schedule, select_algorithm
from ssmc.passes.context import PassContext  # noqa: F401

PIPELINE = [
    ("canonicalize", canonicalize.run),
    ("legalize", legalize.run),
    ("select_algorithm", select_algorithm.run),
    ("fuse", fuse.run),
    ("schedule", schedule.run),
]


def run_pipeline(graph, ctx: PassContext, trace=None):
    """Run every pass on a copy of `graph`; `trace(name, graph)` is called after each.  With
    SSMC_DEBUG=1 the graph is re-verified between passes (CI sets it)."""
    from ssmc.ir.verify import reverify

    graph = copy.deepcopy(graph)
    check = os.environ.get("SSMC_DEBUG") == "1"
    for name, fn in PIPELINE:
        graph = fn(graph, ctx)
        if check:
            reverify(graph)
        if trace is not None:
            trace(name, graph)
    return graph
