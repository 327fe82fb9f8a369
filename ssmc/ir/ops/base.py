"""The op base class and the attribute schema every op declares.

An op is a dataclass: the common fields (name, inputs, outputs, algorithm, location) plus one
field per attribute, declared with `attr(kind, default, choices)`.  The spec loader reads the
schema to check and convert YAML values, so adding an op is writing its dataclass and `infer`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import ClassVar

from ssmc.errors import Loc
from ssmc.ir import dims as D
from ssmc.ir.graph import TensorType

REQUIRED = object()
ATTR_KINDS = ("dim", "int", "float", "bool", "str", "dims", "floats", "mapping", "name")


@dataclass(frozen=True)
class AttrSpec:
    kind: str
    choices: tuple = ()
    doc: str = ""
    optional: bool = False  # may be null / absent without a default value


def attr(kind: str, default=REQUIRED, choices=(), doc: str = "", optional: bool = False):
    assert kind in ATTR_KINDS, kind
    spec = AttrSpec(kind, tuple(choices), doc, optional)
    return field(default=None if default is REQUIRED else default,
                 metadata={"attr": spec, "required": default is REQUIRED and not optional})


class ShapeError(Exception):
    """Raised by `infer`; the verifier adds the node's file:line and name."""

    def __init__(self, port: str, message: str):
        self.port = port
        super().__init__(message)


@dataclass(kw_only=True)
class Op:
    OP: ClassVar[str] = ""
    PORTS: ClassVar[tuple] = ("x",)  # required inputs, in positional order
    OPTIONAL_PORTS: ClassVar[tuple] = ()
    VARIADIC: ClassVar[bool] = False  # any number (>= 2) of inputs of one kind
    ALGORITHMS: ClassVar[tuple] = ()  # algorithms the node can run with; () = not an SSM node
    REJECTED: ClassVar[dict] = {}  # algorithm -> why this node cannot use it
    DOC: ClassVar[str] = ""

    name: str
    inputs: dict = field(default_factory=dict)  # port -> value name (variadic: "0", "1", ...)
    outputs: list = field(default_factory=list)
    algorithm: str = "auto"
    loc: Loc = field(default_factory=Loc)
    locs: dict = field(default_factory=dict, repr=False, compare=False)  # field -> Loc

    @classmethod
    def attr_specs(cls) -> dict:
        return {f.name: f.metadata["attr"] for f in dataclasses.fields(cls) if "attr" in f.metadata}

    @classmethod
    def required_attrs(cls) -> list:
        return [f.name for f in dataclasses.fields(cls) if f.metadata.get("required")]

    def attrs(self) -> dict:
        return {k: getattr(self, k) for k in self.attr_specs()}

    given: frozenset = field(default=frozenset(), repr=False, compare=False)  # attrs the spec set
    meta: dict = field(default_factory=dict, repr=False, compare=False)  # what the passes decided

    def n_outputs(self) -> int:
        return 1

    def ports(self) -> tuple:
        return self.PORTS

    def optional_ports(self) -> tuple:
        return self.OPTIONAL_PORTS

    def algorithms(self) -> tuple:
        return self.ALGORITHMS

    def infer(self, ins: dict) -> list:
        """Input types by port -> output types.  Raise ShapeError(port, message)."""
        raise NotImplementedError

    def validate(self) -> None:
        """Attribute checks beyond the schema; raise ShapeError('<attribute>', message)."""


# ---- helpers shared by the ops' infer methods -------------------------------------------------

def expect_rank(t: TensorType, port: str, lo: int, hi: int | None = None) -> None:
    hi = lo if hi is None else hi
    if not lo <= t.rank <= hi:
        want = f"rank {lo}" if lo == hi else f"rank {lo} to {hi}"
        raise ShapeError(port, f"expected {want}, got {t}")


def expect_dim(got, want, port: str, what: str) -> None:
    want = want if isinstance(want, D.Expr) else D.parse(want)
    if not D.equal(got, want):
        raise ShapeError(port, f"{what} must be {D.render(want)}, got {D.render(got)}")


def expect_float(t: TensorType, port: str) -> None:
    if t.dtype not in ("float32", "float16", "bfloat16", "float64", "complex64"):
        raise ShapeError(port, f"expected a floating-point tensor, got {t.dtype}")


def num(n: int) -> D.Expr:
    return D.parse(int(n))


def with_last(t: TensorType, last, dtype: str | None = None) -> TensorType:
    return TensorType(t.shape[:-1] + (num(last) if isinstance(last, int) else last,), dtype or t.dtype)


def same_shape(ins: dict, ports) -> TensorType:
    first = ins[ports[0]]
    for p in ports[1:]:
        t = ins[p]
        if t.rank != first.rank or not all(D.equal(a, b) for a, b in zip(t.shape, first.shape)):
            raise ShapeError(p, f"shape {t} does not match {ports[0]} {first}")
    return first


