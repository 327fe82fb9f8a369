"""Text form of a graph, for `ssmc explain` and debugging."""

from __future__ import annotations

_SHOWN_META = ("algorithm", "why", "excluded", "kernel", "config", "config_source", "fused",
               "fused_nodes", "complex", "dtype", "folded")


def _attrs(node) -> str:
    parts = []
    for k, v in node.attrs().items():
        if k in node.given or k == "variant":
            parts.append(f"{k}={v}")
    return ", ".join(parts)


def format_graph(graph, indent: str = "", costs: bool = True) -> str:
    lines = []
    for node in graph.topo_nodes():
        outs = ", ".join(node.outputs)
        args = ", ".join(node.inputs.values())
        types = ", ".join(str(graph.types[v]) for v in node.outputs if v in graph.types)
        extra = _attrs(node)
        head = f"{indent}{outs} = {node.OP}({args}{'; ' + extra if extra else ''})"
        lines.append(f"{head:<78} -> {types}")
        for k in _SHOWN_META:
            if k in node.meta:
                lines.append(f"{indent}    {k}: {node.meta[k]}")
        if costs and "costs" in node.meta:
            lines.append(f"{indent}    cost model ({'fastest first'}):")
            lines.append(f"{indent}      {'algorithm':<12} {'time us':>10} {'bound':>8} {'MB':>9} "
                         f"{'GFLOP':>9} {'Gexp':>8} {'depth':>8} {'lanes':>10}")
            for r in node.meta["costs"]:
                lines.append(f"{indent}      {r['algorithm']:<12} {r['time_us']:>10.2f} {r['bound']:>8} "
                             f"{r['bytes'] / 1e6:>9.3f} {r['flops'] / 1e9:>9.4f} {r['exps'] / 1e9:>8.4f} "
                             f"{r['depth']:>8.0f} {r['lanes']:>10.0f}")
        if node.OP == "repeat" and node.body is not None:
            lines.append(f"{indent}  block {node.block} x {node.times}:")
            lines.append(format_graph(node.body, indent + "    ", costs))
    return "\n".join(lines)
