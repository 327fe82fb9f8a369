"""YAML spec -> verified Graph.  Every problem is a SpecError naming file:line:col, the field,
what was expected and, for a misspelled key, op or name, the closest valid one."""

from __future__ import annotations

import math
import re
from pathlib import Path

from ssmc.errors import Loc, SpecError, did_you_mean
from ssmc.ir import dims as D
from ssmc.ir.graph import DTYPES, Graph, TensorType
from ssmc.ir.ops import OPS
from ssmc.ir.ops.base import Op
from ssmc.ir.yaml_positions import LocDict, LocList, load_yaml

TOP_KEYS = ("name", "description", "dims", "inputs", "blocks", "nodes", "outputs", "scaling", "mup_base",
            "dtype")
NODE_KEYS = ("name", "op", "inputs", "outputs", "algorithm")
BLOCK_KEYS = ("inputs", "nodes", "outputs")
PREDECLARED_SYMBOLIC = ("batch", "seqlen")
SYMBOLIC = "symbolic"
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z_0-9]*$")
MAX_NODES = 10_000


class _Ctx:
    """What the reader needs while walking one file."""

    def __init__(self, file: str):
        self.file = file
        self.consts: dict = {}  # dim name -> int
        self.symbolic: list = list(PREDECLARED_SYMBOLIC)

    def err(self, loc, field, msg, suggestion=None):
        return SpecError(loc if isinstance(loc, Loc) else Loc(self.file), field, msg, suggestion)


def _type_name(v) -> str:
    return {LocDict: "a mapping", LocList: "a list", dict: "a mapping", list: "a list",
            str: "a string", bool: "a boolean", int: "an integer", float: "a number",
            type(None): "nothing (null)"}.get(type(v), type(v).__name__)


def _expect(ctx, value, kind, loc, field):
    if not isinstance(value, kind):
        want = {LocDict: "a mapping", LocList: "a list", str: "a string"}[kind]
        raise ctx.err(loc, field, f"expected {want}, got {_type_name(value)}")
    return value


def _check_keys(ctx, m: LocDict, allowed, where: str, required=()):
    for k in m:
        if k not in allowed:
            raise ctx.err(m.key_loc(k), f"{where}{k}", f"unknown key; expected one of: {', '.join(allowed)}",
                          did_you_mean(k, allowed))
    for k in required:
        if k not in m:
            raise ctx.err(m.loc, f"{where}{k}", "missing required key")


def _ident(ctx, v, loc, field) -> str:
    if not isinstance(v, str) or not _IDENT.match(v):
        raise ctx.err(loc, field, f"expected a name (letters, digits, _), got {v!r}"[:200])
    return v


# ---- dims --------------------------------------------------------------------------------------

def _read_dims(ctx: _Ctx, m, loc: Loc, overrides: dict | None = None) -> None:
    if m is None:
        return
    m = _expect(ctx, m, LocDict, loc, "dims")
    exprs = {}
    for name, value in m.items():
        _ident(ctx, name, m.key_loc(name), "dims")
        if name in PREDECLARED_SYMBOLIC and value != SYMBOLIC and value is not None:
            raise ctx.err(m.key_loc(name), f"dims.{name}", "is bound at run time; declare it as 'symbolic' or leave it out")
        if value is None or value == SYMBOLIC:
            if name not in ctx.symbolic:
                ctx.symbolic.append(name)
            continue
        try:
            exprs[name] = D.parse(value)
        except D.DimError as e:
            raise ctx.err(m.value_loc(name), f"dims.{name}", str(e)) from None
    for name, value in (overrides or {}).items():  # e.g. the base widths of a muP model
        exprs[name] = D.parse(int(value))
    # Resolve in dependency order; report unknown names and cycles.  Depth-first with an explicit
    # stack: a chain of thousands of dims must not hit Python's recursion limit.
    def resolve(root):
        path, todo = [], [root]  # path: the chain being resolved (for the cycle message)
        while todo:
            name = todo[-1]
            if name in ctx.consts:
                todo.pop()
                continue
            if not path or path[-1] != name:  # first visit: check and queue its dependencies
                path.append(name)
                deps = []
                for s in sorted(exprs[name].symbols()):
                    if s in ctx.symbolic:
                        raise ctx.err(m.value_loc(name), f"dims.{name}", f"uses '{s}', which is bound at run "
                                      "time; dims must be constants")
                    if s not in exprs:
                        raise ctx.err(m.value_loc(name), f"dims.{name}", f"unknown dimension '{s}'",
                                      did_you_mean(s, list(exprs) + ctx.symbolic))
                    if s in path:
                        cycle = path[path.index(s):] + [s]  # the cycle, not the way in
                        if len(cycle) > 9:
                            cycle = cycle[:4] + [f"... ({len(cycle) - 7} more)"] + cycle[-3:]
                        raise ctx.err(m.value_loc(s), f"dims.{s}", "cyclic definition: " + " -> ".join(cycle))
                    if s not in ctx.consts:
                        deps.append(s)
                todo.extend(reversed(deps))
                continue
            # second visit: every dependency is resolved
            try:
                ctx.consts[name] = D.as_int(exprs[name], ctx.consts)
            except D.DimError as e:
                raise ctx.err(m.value_loc(name), f"dims.{name}", str(e)) from None
            path.pop()
            todo.pop()

    for name in exprs:
        resolve(name)


def _const_dim(ctx, value, loc, field, allow_negative=False) -> int:
    try:
        e = D.parse(value)
        for s in sorted(e.symbols()):
            if s in ctx.symbolic:
                raise ctx.err(loc, field, f"must be a constant, but '{s}' is bound at run time")
            if s not in ctx.consts:
                raise ctx.err(loc, field, f"unknown dimension '{s}'", did_you_mean(s, list(ctx.consts)))
        v = e.eval(ctx.consts)
        if v.denominator != 1:
            raise D.DimError(f"{D.render(e)} = {float(v):g} is not a whole number (use ceil() or floor())")
        if v < 0 and not allow_negative:
            raise D.DimError(f"{D.render(e)} = {v} is negative")
        return int(v)
    except D.DimError as e:
        raise ctx.err(loc, field, str(e)) from None


def _shape_dim(ctx, value, loc, field) -> D.Expr:
    try:
        e = D.parse(value)
    except D.DimError as err:
        raise ctx.err(loc, field, str(err)) from None
    known = list(ctx.consts) + ctx.symbolic
    for s in sorted(e.symbols()):
        if s not in known:
            raise ctx.err(loc, field, f"unknown dimension '{s}' (declare it under dims:, "
                          "as a number or as 'symbolic')", did_you_mean(s, known))
    try:
        out = D.substitute(e, ctx.consts)
        if not out.symbols():
            D.as_int(out, {})
        return out
    except D.DimError as err:
        raise ctx.err(loc, field, str(err)) from None


def _read_tensor_type(ctx, v, loc, field) -> TensorType:
    v = _expect(ctx, v, LocDict, loc, field)
    _check_keys(ctx, v, ("shape", "dtype"), f"{field}.", required=("shape",))
    shape = _expect(ctx, v["shape"], LocList, v.value_loc("shape"), f"{field}.shape")
    if len(shape) > 8:
        raise ctx.err(shape.loc, f"{field}.shape", f"rank {len(shape)} is more than 8")
    dims = tuple(_shape_dim(ctx, s, shape.item_loc(i), f"{field}.shape[{i}]") for i, s in enumerate(shape))
    dtype = v.get("dtype", "float32")
    if dtype not in DTYPES:
        raise ctx.err(v.value_loc("dtype"), f"{field}.dtype", f"expected one of {', '.join(DTYPES)}, got {dtype!r}",
                      did_you_mean(dtype, DTYPES))
    return TensorType(dims, dtype)


# ---- nodes -------------------------------------------------------------------------------------

def _float(ctx, v, loc, field) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float, str)):
        raise ctx.err(loc, field, f"expected a number, got {_type_name(v)}")
    try:
        f = float(v)  # YAML 1.1 reads 1e-3 (no dot) as a string; accept it as a number
    except (ValueError, OverflowError):
        raise ctx.err(loc, field, f"expected a number, got {v!r}"[:200]) from None
    if not math.isfinite(f):  # no attribute means infinity or NaN; they would only poison the math
        raise ctx.err(loc, field, f"expected a finite number, got {f}")
    return f


def _convert_attr(ctx, spec, v, loc, field):
    k = spec.kind
    if v is None and spec.optional:
        return None
    if k == "dim":  # a size (width, count, length): zero is never meaningful
        n = _const_dim(ctx, v, loc, field)
        if n < 1:
            raise ctx.err(loc, field, f"must be >= 1, got {n}")
        return n
    if k == "int":
        return _const_dim(ctx, v, loc, field, allow_negative=True)
    if k == "float":
        return _float(ctx, v, loc, field)
    if k == "bool":
        if not isinstance(v, bool):
            raise ctx.err(loc, field, f"expected true or false, got {_type_name(v)} {v!r}"[:200])
        return v
    if k in ("str", "name"):
        if not isinstance(v, str):
            raise ctx.err(loc, field, f"expected a string, got {_type_name(v)}")
        if spec.choices and v not in spec.choices:
            raise ctx.err(loc, field, f"expected one of {', '.join(spec.choices)}, got {v!r}"[:300],
                          did_you_mean(v, spec.choices))
        return v
    if k in ("dims", "floats"):
        lst = _expect(ctx, v, LocList, loc, field)
        if len(lst) > 64:
            raise ctx.err(loc, field, f"at most 64 entries, got {len(lst)}")
        conv = _const_dim if k == "dims" else _float
        return [conv(ctx, x, lst.item_loc(i), f"{field}[{i}]") for i, x in enumerate(lst)]
    if k == "mapping":
        m = _expect(ctx, v, LocDict, loc, field)
        out = {}
        for key, val in m.items():
            if not isinstance(key, str):
                raise ctx.err(m.key_loc(key), field, f"keys must be names, got {key!r}")
            if isinstance(val, bool) or not isinstance(val, (int, float, str)):
                raise ctx.err(m.value_loc(key), f"{field}.{key}", f"expected a number or a string, got {_type_name(val)}")
            out[key] = val
        return out
    raise AssertionError(k)


def _read_node(ctx, raw, loc, where: str) -> Op:
    raw = _expect(ctx, raw, LocDict, loc, where)
    if "op" not in raw:
        raise ctx.err(raw.loc, f"{where}.op", "missing required key (the op kind, e.g. linear, selective_ssm)")
    op = raw["op"]
    if not isinstance(op, str) or op not in OPS:
        raise ctx.err(raw.value_loc("op"), f"{where}.op", f"unknown op {op!r}"[:200] + "; known: " + ", ".join(sorted(OPS)),
                      did_you_mean(op, OPS) if isinstance(op, str) else None)
    cls = OPS[op]
    if "name" not in raw:
        raise ctx.err(raw.loc, f"{where}.name", "missing required key (a unique node name)")
    name = _ident(ctx, raw["name"], raw.value_loc("name"), f"{where}.name")
    field_prefix = f"nodes.{name}"
    specs = cls.attr_specs()
    allowed = list(NODE_KEYS) + list(specs)
    _check_keys(ctx, raw, allowed, f"{field_prefix}.")
    values, locs = {}, {}
    for key, spec in specs.items():
        if key in raw:
            values[key] = _convert_attr(ctx, spec, raw[key], raw.value_loc(key), f"{field_prefix}.{key}")
            locs[key] = raw.value_loc(key)
    for key in cls.required_attrs():
        if key not in values:
            raise ctx.err(raw.loc, f"{field_prefix}.{key}", f"missing required attribute of op '{op}'"
                          + (f" ({specs[key].doc})" if specs[key].doc else ""))
    node = cls(name=name, loc=raw.loc, locs=locs, given=frozenset(values), **values)
    if "algorithm" in raw:
        node.algorithm = _read_algorithm(ctx, node, raw["algorithm"], raw.value_loc("algorithm"), field_prefix)
        node.locs["algorithm"] = raw.value_loc("algorithm")  # the verifier's rejections point here
    node.inputs = _read_inputs(ctx, node, raw.get("inputs"), raw.value_loc("inputs") if "inputs" in raw else raw.loc,
                               field_prefix)
    node.locs["inputs"] = raw.value_loc("inputs") if "inputs" in raw else raw.loc
    node.locs["outputs"] = raw.value_loc("outputs") if "outputs" in raw else raw.loc
    node._raw_outputs = raw.get("outputs")
    return node


def _read_algorithm(ctx, node, v, loc, field_prefix):
    field = f"{field_prefix}.algorithm"
    if not isinstance(v, str):
        raise ctx.err(loc, field, f"expected a string, got {_type_name(v)}")
    if v == "auto":
        return v
    if not node.ALGORITHMS:
        raise ctx.err(loc, field, f"op '{node.OP}' has no algorithm choice (only SSM nodes do)")
    return v  # checked against the variant's algorithms by the verifier


def _read_inputs(ctx, node, v, loc, field_prefix) -> dict:
    field = f"{field_prefix}.inputs"
    if v is None:
        raise ctx.err(loc, field, "missing required key (the values this node reads)")
    if isinstance(v, str):
        v = LocList([v])
        v.loc, v.item_locs = loc, [loc]
    if node.VARIADIC:
        lst = _expect(ctx, v, LocList, loc, field)
        if not lst:
            raise ctx.err(loc, field, "expected at least one input")
        if len(lst) < 2 and node.OP != "repeat":
            raise ctx.err(loc, field, f"op '{node.OP}' takes at least two inputs")
        node.locs.update({f"inputs.{i}": lst.item_loc(i) for i in range(len(lst))})
        return {str(i): _value_name(ctx, x, lst.item_loc(i), f"{field}[{i}]") for i, x in enumerate(lst)}
    ports, optional = node.ports(), node.optional_ports()
    allp = list(ports) + list(optional)
    if isinstance(v, LocList):
        if len(v) < len(ports) or len(v) > len(allp):
            want = f"{len(ports)}" if not optional else f"{len(ports)} to {len(allp)}"
            raise ctx.err(loc, field, f"op '{node.OP}' takes {want} inputs ({', '.join(allp)}), got {len(v)}")
        node.locs.update({f"inputs.{allp[i]}": v.item_loc(i) for i in range(len(v))})
        return {allp[i]: _value_name(ctx, x, v.item_loc(i), f"{field}[{i}]") for i, x in enumerate(v)}
    m = _expect(ctx, v, LocDict, loc, field)
    for k in m:
        if k not in allp:
            raise ctx.err(m.key_loc(k), f"{field}.{k}", f"unknown input port; op '{node.OP}' takes: {', '.join(allp)}",
                          did_you_mean(k, allp))
    for p in ports:
        if p not in m:
            raise ctx.err(m.loc, f"{field}.{p}", f"missing required input of op '{node.OP}'")
    # Per-port positions, so that a dangling name or a shape error points at the exact value.
    node.locs.update({f"inputs.{k}": m.value_loc(k) for k in m})
    return {k: _value_name(ctx, x, m.value_loc(k), f"{field}.{k}") for k, x in m.items()}


def _value_name(ctx, v, loc, field) -> str:
    return _ident(ctx, v, loc, field)


def _read_outputs(ctx, node: Op) -> None:
    raw, loc = node.__dict__.pop("_raw_outputs", None), node.locs["outputs"]
    n = node.n_outputs()
    if raw is None:
        node.outputs = [node.name] if n == 1 else [f"{node.name}_{i}" for i in range(n)]
        return
    if isinstance(raw, str):
        raw = LocList([raw])
        raw.loc, raw.item_locs = loc, [loc]
    lst = _expect(ctx, raw, LocList, loc, f"nodes.{node.name}.outputs")
    if len(lst) != n:
        raise ctx.err(loc, f"nodes.{node.name}.outputs", f"op '{node.OP}' here produces {n} value(s), got {len(lst)} name(s)")
    node.outputs = [_ident(ctx, x, lst.item_loc(i), f"nodes.{node.name}.outputs[{i}]") for i, x in enumerate(lst)]


# ---- the file ----------------------------------------------------------------------------------

def _read_graph_body(ctx, m: LocDict, where: str, blocks: dict, later=()):
    nodes_raw = _expect(ctx, m.get("nodes"), LocList, m.value_loc("nodes") if "nodes" in m else m.loc, f"{where}nodes")
    if not nodes_raw:
        raise ctx.err(nodes_raw.loc, f"{where}nodes", "expected at least one node")
    if len(nodes_raw) > MAX_NODES:
        raise ctx.err(nodes_raw.loc, f"{where}nodes", f"at most {MAX_NODES} nodes")
    nodes = [_read_node(ctx, raw, nodes_raw.item_loc(i), f"{where}nodes[{i}]") for i, raw in enumerate(nodes_raw)]
    for node in nodes:
        if node.OP == "repeat":
            if node.block in later:  # defined, but not yet: no recursion through blocks
                raise ctx.err(node.locs.get("block", node.loc), f"nodes.{node.name}.block",
                              f"block {node.block!r} is this block or one defined after it; a block may "
                              "only repeat blocks defined before it")
            if node.block not in blocks:
                raise ctx.err(node.locs.get("block", node.loc), f"nodes.{node.name}.block",
                              f"unknown block {node.block!r}", did_you_mean(node.block, list(blocks)))
            node.n_out = len(blocks[node.block]["outputs"])
        _read_outputs(ctx, node)
    outs = m.get("outputs")
    if isinstance(outs, str):
        outs = [outs]
    outs_loc = m.value_loc("outputs") if "outputs" in m else m.loc
    if not isinstance(outs, list) or not outs:
        raise ctx.err(outs_loc, f"{where}outputs", "expected a non-empty list of value names")
    outputs = [_ident(ctx, o, outs.item_loc(i) if isinstance(outs, LocList) else outs_loc, f"{where}outputs[{i}]")
               for i, o in enumerate(outs)]
    return nodes, outputs, outs_loc


def _read_mup_base(ctx, top) -> dict:
    """`mup_base: {dim: value}`: the widths at which the muP multipliers are 1."""
    if "mup_base" not in top:
        if top.get("scaling") == "mup":
            raise ctx.err(top.key_loc("scaling"), "mup_base", "scaling: mup needs mup_base, the base "
                          "widths (e.g. mup_base: {d_model: 64})")
        return {}
    m = _expect(ctx, top["mup_base"], LocDict, top.value_loc("mup_base"), "mup_base")
    out = {}
    for k, v in m.items():
        if k not in ctx.consts:
            raise ctx.err(m.key_loc(k), f"mup_base.{k}", "not a constant dim of this spec",
                          did_you_mean(k, list(ctx.consts)) if isinstance(k, str) else None)
        out[k] = _const_dim(ctx, v, m.value_loc(k), f"mup_base.{k}")
        if out[k] < 1:
            raise ctx.err(m.value_loc(k), f"mup_base.{k}", f"must be >= 1, got {out[k]}")
    return out


def load_spec(source, *, verify: bool = True, dims: dict | None = None) -> Graph:
    """Read a spec from a path (str or Path ending in .yaml/.yml) or from YAML text.  `dims`
    overrides constant dims (the muP base model is the same spec at its base widths)."""
    if isinstance(source, Path) or (isinstance(source, str) and "\n" not in source
                                    and source.endswith((".yaml", ".yml"))):
        path = Path(source)
        try:
            text = path.read_text()
        except FileNotFoundError:
            raise SpecError(Loc(str(path), 0, 0), "<file>", "no such file") from None
        except (OSError, UnicodeDecodeError) as e:
            raise SpecError(Loc(str(path), 0, 0), "<file>", f"cannot read: {e}") from None
        file = str(source)
    else:
        text, file = str(source), "<spec>"
    ctx = _Ctx(file)
    doc = load_yaml(text, file)
    top = _expect(ctx, doc, LocDict, Loc(file, 1, 1), "<top>")
    _check_keys(ctx, top, TOP_KEYS, "", required=("name", "inputs", "nodes", "outputs"))
    name = _expect(ctx, top["name"], str, top.value_loc("name"), "name")
    desc = top.get("description", "")
    if not isinstance(desc, str):
        raise ctx.err(top.value_loc("description"), "description", f"expected a string, got {_type_name(desc)}")
    scaling = top.get("scaling", "standard")
    if scaling not in ("standard", "mup"):
        raise ctx.err(top.value_loc("scaling"), "scaling", f"expected standard or mup, got {scaling!r}"[:200],
                      did_you_mean(scaling, ("standard", "mup")) if isinstance(scaling, str) else None)
    dtype = top.get("dtype", "float32")
    if dtype not in ("float32", "float16", "bfloat16"):
        raise ctx.err(top.value_loc("dtype"), "dtype", f"expected float32, float16 or bfloat16, got {dtype!r}"[:200],
                      did_you_mean(dtype, ("float32", "float16", "bfloat16")) if isinstance(dtype, str) else None)
    _read_dims(ctx, top.get("dims"), top.value_loc("dims"), dims)
    mup_base = _read_mup_base(ctx, top)

    inputs_raw = _expect(ctx, top["inputs"], LocDict, top.value_loc("inputs"), "inputs")
    if not inputs_raw:
        raise ctx.err(inputs_raw.loc, "inputs", "expected at least one input")
    inputs = {_ident(ctx, k, inputs_raw.key_loc(k), "inputs"): _read_tensor_type(ctx, v, inputs_raw.value_loc(k), f"inputs.{k}")
              for k, v in inputs_raw.items()}

    blocks_raw = top.get("blocks")
    if blocks_raw is None:  # absent or empty (`blocks:`); `blocks: 0` or `[]` are errors below
        blocks_raw = LocDict()
    blocks_raw = _expect(ctx, blocks_raw, LocDict, top.value_loc("blocks") if "blocks" in top else top.loc, "blocks")
    block_defs = {}
    for bname, braw in blocks_raw.items():
        _ident(ctx, bname, blocks_raw.key_loc(bname), "blocks")
        braw = _expect(ctx, braw, LocDict, blocks_raw.value_loc(bname), f"blocks.{bname}")
        _check_keys(ctx, braw, BLOCK_KEYS, f"blocks.{bname}.", required=BLOCK_KEYS)
        bins = braw["inputs"]
        if isinstance(bins, str):
            bins = [bins]
        if not isinstance(bins, list) or not bins:
            raise ctx.err(braw.value_loc("inputs"), f"blocks.{bname}.inputs", "expected a non-empty list of names")
        bins = [_ident(ctx, x, braw.value_loc("inputs"), f"blocks.{bname}.inputs") for x in bins]
        block_defs[bname] = (braw, bins)
    # Blocks may use each other (nested repeats); read bodies in order, a block sees the earlier ones.
    blocks = {}
    for bname, (braw, bins) in block_defs.items():
        nodes, outputs, outs_loc = _read_graph_body(ctx, braw, f"blocks.{bname}.", blocks,
                                                    later=[b for b in block_defs if b not in blocks])
        blocks[bname] = dict(inputs=bins, nodes=nodes, outputs=outputs, outputs_loc=outs_loc, loc=braw.loc)
    nodes, outputs, outs_loc = _read_graph_body(ctx, top, "", blocks)

    graph = Graph(name=name, dims=dict(ctx.consts), symbolic=tuple(ctx.symbolic), inputs=inputs,
                  outputs=outputs, nodes=nodes, description=desc, scaling=scaling, dtype=dtype, file=file)
    graph.outputs_loc = outs_loc
    graph.block_defs = blocks
    graph.mup_base = mup_base
    graph.source = source
    if verify:
        from ssmc.ir.verify import verify as _verify

        _verify(graph, ctx)
    return graph


def load_zoo() -> dict:
    """Every spec in ir/: name -> Graph."""
    from ssmc.paths import zoo_dir

    return {p.stem: load_spec(p) for p in sorted(zoo_dir().glob("*.yaml"))}
