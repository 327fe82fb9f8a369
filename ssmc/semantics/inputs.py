"""Random inputs of the right shapes for a graph (for `ssmc run`, tests and benchmarks)."""

from __future__ import annotations

import torch

from ssmc.errors import SsmcError
from ssmc.ir import dims as D
from ssmc.ir.graph import Graph

_TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
                 "float64": torch.float64, "complex64": torch.complex64, "int64": torch.int64,
                 "int32": torch.int32, "bool": torch.bool}


def torch_dtype(name: str) -> torch.dtype:
    return _TORCH_DTYPES[name]


def bind_shape(shape, bindings: dict, what: str) -> tuple:
    out = []
    for e in shape:
        try:
            out.append(D.as_int(e, bindings))
        except D.Unbound as u:
            raise SsmcError(f"{what}: dimension '{u.name}' needs a value (e.g. --dim {u.name}=8)") from None
        except D.DimError as err:
            raise SsmcError(f"{what}: {err}") from None
    return tuple(out)


def _int_high(graph: Graph, value: str) -> int:
    """Token ids feed an embedding: sample below its vocabulary size."""
    for node in graph.nodes:
        if node.OP == "embedding" and value in node.inputs.values():
            return node.num
    return 2


def random_inputs(graph: Graph, bindings: dict, *, seed: int = 0, device="cpu", dtype=None) -> dict:
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for name, t in graph.inputs.items():
        shape = bind_shape(t.shape, bindings, f"input '{name}'")
        dt = _TORCH_DTYPES[t.dtype]
        if dt.is_floating_point or dt.is_complex:
            x = torch.randn(shape, generator=gen, dtype=torch.float32)
            x = x.to(dtype or dt)
        else:
            x = torch.randint(0, _int_high(graph, name), shape, generator=gen, dtype=dt)
        out[name] = x.to(device)
    return out
