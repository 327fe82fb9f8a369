"""A verified Graph -> an eager PyTorch nn.Module (the reference model, the oracle).

Each op kind maps to a small adapter module; parameter names are `<node>.<param>` and
`<repeat>.<i>.<node>.<param>`, the names every compiled model keeps so that state dicts move
between them.
"""

from __future__ import annotations

import functools

import torch
import torch.nn as nn
import torch.nn.functional as F

from ssmc.errors import SpecError
from ssmc.ir import dims as D
from ssmc.ir.graph import Graph

_RESERVED = frozenset(dir(nn.Module))
_ACT = {"silu": F.silu, "gelu": F.gelu, "relu": F.relu, "sigmoid": torch.sigmoid, "tanh": torch.tanh,
        "softplus": F.softplus, "exp": torch.exp, "identity": lambda x: x}


def _const(graph: Graph, node, e, what: str) -> int:
    try:
        return D.as_int(e, {})
    except D.DimError:
        raise SpecError(node.loc, f"nodes.{node.name}.inputs",
                        f"{what} must be a constant to build parameters, got {D.render(e)}") from None


def _in_type(graph: Graph, node, port: str):
    return graph.types[node.inputs[port]]


def _last(graph, node, port="x") -> int:
    return _const(graph, node, _in_type(graph, node, port).shape[-1], f"the last axis of input '{port}'")


class _Fn(nn.Module):
    """A parameter-free op."""

    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, *xs):
        return self.fn(*xs)


def _selective(graph, node):
    from ssmc.semantics.modules_ssm import SelectiveSSM

    kw = dict(variant=node.variant, d_state=node.d_state)
    if node.variant == "mamba1":
        kw.update(groups=node.groups, complex=node.complex, delta_bias=node.delta_bias,
                  delta_softplus=node.delta_softplus, D=node.D, conj_pair=node.conj_pair,
                  dt_min=node.dt_min, dt_max=node.dt_max, start=node.start)
    elif node.variant == "ssd":
        d = _last(graph, node)
        kw.update(heads=node.heads, head_dim=d // node.heads, groups=node.groups, D=node.D,
                  dt_min=node.dt_min, dt_max=node.dt_max, dt_softplus=node.delta_softplus,
                  dt_bias=node.delta_bias, chunk_size=node.chunk_size,
                  dt_limit=tuple(node.dt_limit) if node.dt_limit else (0.0, float("inf")))
    else:
        kw.update(block_size=node.block, transition=node.transition, D=node.D,
                  scan="assoc" if node.algorithm == "associative" else "sequential")
    return SelectiveSSM(_last(graph, node), **kw)


def diagonal_module(node, d_model: int) -> nn.Module:
    """The reference module of a diagonal_ssm node over d_model channels (also what the tuner
    draws an S4D node's discrete parameters from)."""
    from ssmc.semantics.modules_ssm import DiagonalSSM

    return DiagonalSSM(d_model, node.d_state, complex=node.complex,
                       discretization=node.discretization, init=node.init,
                       conj_pair=node.conj_pair, learn_dt=node.learn_dt, dt_min=node.dt_min,
                       dt_max=node.dt_max, D=node.D, parameterization=node.parameterization,
                       method="recurrence" if node.algorithm == "sequential" else "fft")


def node_module(graph: Graph, node) -> nn.Module:
    """The reference module of one node of `graph` (its parameters drawn as the model's are;
    what the tuner runs a node's executor on)."""
    return _build_op(graph, node)


def _build_op(graph: Graph, node, runner=None) -> nn.Module:
    """One node -> its module (parameters) ; forward(*inputs in port order) -> tensor or tuple."""
    op = node.OP
    if op == "embedding":
        return nn.Embedding(node.num, node.dim)
    if op == "linear":
        return nn.Linear(_last(graph, node), node.out, bias=node.bias)
    if op == "conv1d":
        from ssmc.semantics.glue import CausalConv1d

        m = CausalConv1d(_last(graph, node), node.kernel, bias=node.bias)
        if node.activation != "identity":  # a hook keeps the parameters at <node>.weight / .bias
            act = _ACT[node.activation]
            m.register_forward_hook(lambda _m, _i, out: act(out))
        return m
    if op == "conv":
        from ssmc.semantics.glue import LongConv

        m = LongConv(_last(graph, node), node.length, init=node.init, tr=node.tr,
                     method="direct" if node.algorithm == "direct" else "fft")
        if not node.learnable:
            m.requires_grad_(False)
        return m
    if op in _ACT:
        return _Fn(_ACT[op])
    if op == "rmsnorm":
        from ssmc.semantics.glue import RMSNorm

        return RMSNorm(_last(graph, node), eps=node.eps, groups=node.groups)
    if op == "layernorm":
        return nn.LayerNorm(_last(graph, node), eps=node.eps)
    if op == "gate":
        act = _ACT[node.fn]
        return _Fn(lambda x, z: x * act(z))
    if op == "add":
        return _Fn(lambda *xs: functools.reduce(torch.add, xs))
    if op == "mul":
        return _Fn(lambda *xs: functools.reduce(torch.mul, xs))
    if op == "split":
        return _Fn(lambda x, s=tuple(node.sizes), a=node.axis: torch.split(x, s, dim=a))
    if op == "concat":
        return _Fn(lambda *xs, a=node.axis: torch.cat(xs, dim=a))
    if op == "reshape":
        return _Fn(lambda x, k=node.keep, s=tuple(node.shape): x.reshape(*x.shape[:k], *s))
    if op == "transpose":
        return _Fn(lambda x, p=tuple(node.perm): x.permute(*p))
    if op == "mean":
        return _Fn(lambda x, a=node.axis: x.mean(dim=a))
    if op == "repeat":
        return nn.ModuleList(GraphModule(node.body, runner) for _ in range(node.times))
    if op == "diagonal_ssm":
        return diagonal_module(node, _last(graph, node, "u"))
    if op == "selective_ssm":
        return _selective(graph, node)
    if op == "ssm2d":
        from ssmc.semantics.modules_misc import SSM2D

        return SSM2D(_last(graph, node), node.d_state, selective=node.selective,
                     bidirectional=node.bidirectional, dt_min=node.dt_min, dt_max=node.dt_max)
    if op == "nested_recursion":
        from ssmc.semantics.modules_misc import NestedRecursion

        return NestedRecursion(_last(graph, node), chunk=node.chunk or 30, inner=node.inner, beam=node.beam)
    if op == "recurrence":
        from ssmc.semantics.modules_misc import PLRNN

        return PLRNN(node.latent, _last(graph, node, "s"))
    raise NotImplementedError(f"no reference for op {op!r}")


def _call(graph: Graph, node, mod: nn.Module, args: list):
    if node.OP == "repeat":
        outs = args
        for block in mod:
            outs = block(*outs)
            outs = list(outs) if isinstance(outs, (tuple, list)) else [outs]
        return outs
    if node.OP in ("selective_ssm", "diagonal_ssm", "ssm2d"):
        kwargs = dict(zip(node.inputs, args))
        if node.OP == "selective_ssm" and node.final_state:
            kwargs["return_final_state"] = True
        return mod(**kwargs)
    return mod(*args)


class GraphModule(nn.Module):
    """Runs a verified graph eagerly, node by node in dependency order.

    `runner(node, module, args)` may run a node some other way (a compiled kernel) and returns
    NotImplemented to leave it to the reference; repeated blocks get the same runner.  A node
    with a folded epilogue node (node.meta['epilogue'], see passes/fuse.py) is called as
    `runner(node, module, args, epilogue=<its module>)` and must return the epilogue's result;
    the reference runs the node, then the epilogue."""

    def __init__(self, graph: Graph, runner=None):
        super().__init__()
        self.graph = graph
        self._runner = runner
        self._order = graph.topo_nodes()
        for node in self._order:
            # a node the passes folded into this one (its epilogue) keeps its own module
            for n in (node, node.meta.get("epilogue")):
                if n is None:
                    continue
                if n.name in _RESERVED:
                    raise SpecError(n.loc, f"nodes.{n.name}.name",
                                    f"'{n.name}' is a reserved name in torch.nn.Module; rename the node")
                self.add_module(n.name, _build_op(graph, n, runner))
        for node in self._order:
            if node.OP == "linear" and node.tied:
                src = getattr(self, node.tied, None)
                if not isinstance(src, nn.Embedding):
                    raise SpecError(node.locs.get("tied", node.loc), f"nodes.{node.name}.tied",
                                    f"'{node.tied}' is not an embedding node of this graph")
                if src.weight.shape != getattr(self, node.name).weight.shape:
                    raise SpecError(node.locs.get("tied", node.loc), f"nodes.{node.name}.tied",
                                    f"shape {tuple(src.weight.shape)} of '{node.tied}' does not match "
                                    f"{tuple(getattr(self, node.name).weight.shape)}")
                getattr(self, node.name).weight = src.weight
        self.lr_multipliers = {}  # parameter name -> muP learning-rate multiplier
        if getattr(graph, "mup_base", None):
            self._apply_mup(graph)

    def _apply_mup(self, graph: Graph) -> None:
        """Rescale the init against the same spec at its base widths (MODELS.md section 9)."""
        from ssmc.ir.spec import load_spec
        from ssmc.semantics.mup import apply_mup

        base_graph = load_spec(graph.source, dims=graph.mup_base)
        base_graph.mup_base = {}
        with torch.device("meta"):
            base = GraphModule(base_graph)
        for group in apply_mup(self, base=base, lr=1.0):
            for name in group["mup_names"]:
                self.lr_multipliers[name] = group["lr_mult"]

    def param_groups(self, lr: float) -> list:
        """Optimizer parameter groups: one per muP learning-rate multiplier (one group when the
        spec uses standard scaling)."""
        groups: dict = {}
        for name, p in self.named_parameters():
            mult = self.lr_multipliers.get(name, 1.0)
            groups.setdefault(mult, {"params": [], "lr": lr * mult, "lr_mult": mult})["params"].append(p)
        return list(groups.values())

    def forward(self, *args, **kwargs):
        names = list(self.graph.inputs)
        if len(args) > len(names):
            raise TypeError(f"{self.graph.name} takes {len(names)} input(s) ({', '.join(names)}), got {len(args)}")
        env = dict(zip(names, args))
        env.update(kwargs)
        missing = [n for n in names if n not in env]
        if missing:
            raise TypeError(f"missing input(s): {', '.join(missing)}")
        for node in self._order:
            ins = [env[v] for v in node.inputs.values()]
            mod = getattr(self, node.name)
            epi = node.meta.get("epilogue")
            if self._runner is None:
                out = NotImplemented
            elif epi is None:
                out = self._runner(node, mod, ins)
            else:
                out = self._runner(node, mod, ins, epilogue=getattr(self, epi.name))
            if out is NotImplemented:
                out = _call(self.graph, node, mod, ins)
                if epi is not None:  # the kernel did not run: neither did its epilogue
                    out = _call(self.graph, epi, getattr(self, epi.name), [out])
            outs = list(out) if isinstance(out, (tuple, list)) else [out]
            env.update(zip(node.outputs, outs))
        res = [env[v] for v in self.graph.outputs]
        return res[0] if len(res) == 1 else tuple(res)


def build_reference(graph: Graph, device=None) -> GraphModule:
    """The eager reference model of a verified graph (device='meta' builds shapes only)."""
    with torch.device(device or "cpu"):
        return GraphModule(graph)
