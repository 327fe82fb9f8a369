"""Glue ops around the SSM nodes.  Activations are channel-last: (batch, seqlen, features)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ssmc.ir import dims as D
from ssmc.ir.graph import TensorType
from ssmc.ir.ops.base import (Op, ShapeError, attr, expect_dim, expect_float, expect_rank, num,
                              same_shape, with_last)


@dataclass(kw_only=True)
class Embedding(Op):
    OP: ClassVar[str] = "embedding"
    DOC: ClassVar[str] = "token ids (b, L) -> (b, L, dim)"
    num: int = attr("dim", doc="vocabulary size")
    dim: int = attr("dim", doc="embedding width")

    def infer(self, ins):
        t = ins["x"]
        if t.dtype not in ("int64", "int32"):
            raise ShapeError("x", f"expected integer token ids, got {t.dtype}")
        return [TensorType(t.shape + (num(self.dim),), "float32")]


@dataclass(kw_only=True)
class Linear(Op):
    OP: ClassVar[str] = "linear"
    DOC: ClassVar[str] = "(..., in) -> (..., out)"
    out: int = attr("dim", doc="output features")
    bias: bool = attr("bool", True)
    tied: str = attr("name", optional=True, doc="share the weight of this embedding node")

    def infer(self, ins):
        expect_rank(ins["x"], "x", 1, 6)
        expect_float(ins["x"], "x")
        return [with_last(ins["x"], self.out)]


@dataclass(kw_only=True)
class Conv1d(Op):
    OP: ClassVar[str] = "conv1d"
    DOC: ClassVar[str] = "causal depthwise conv over L: (b, L, c) -> (b, L, c)"
    kernel: int = attr("dim", doc="kernel width")
    bias: bool = attr("bool", True)
    activation: str = attr("str", "identity", choices=("identity", "silu"))

    def validate(self):
        if self.kernel < 1:
            raise ShapeError("kernel", f"must be >= 1, got {self.kernel}")

    def infer(self, ins):
        expect_rank(ins["x"], "x", 3)
        return [ins["x"]]


@dataclass(kw_only=True)
class LongConv(Op):
    OP: ClassVar[str] = "conv"
    DOC: ClassVar[str] = "causal long convolution with a per-channel kernel (e.g. an HRF)"
    ALGORITHMS: ClassVar[tuple] = ("fft", "direct")
    length: int = attr("dim", doc="kernel length in steps")
    init: str = attr("str", "random", choices=("random", "hrf"))
    tr: float = attr("float", 1.0, doc="seconds per step (HRF sampling)")
    learnable: bool = attr("bool", True)

    def validate(self):
        if self.length < 1:
            raise ShapeError("length", f"must be >= 1, got {self.length}")
        if self.tr <= 0:
            raise ShapeError("tr", f"seconds per step must be > 0, got {self.tr}")

    def infer(self, ins):
        expect_rank(ins["x"], "x", 3)
        return [ins["x"]]


@dataclass(kw_only=True)
class Activation(Op):
    PORTS: ClassVar[tuple] = ("x",)

    def infer(self, ins):
        expect_float(ins["x"], "x")
        return [ins["x"]]


def _activation(op_name: str) -> type:
    cls = type(op_name.capitalize(), (Activation,), {"OP": op_name, "DOC": f"elementwise {op_name}",
                                                     "__annotations__": {}})
    return dataclass(kw_only=True)(cls)


Silu, Gelu, Relu, Sigmoid, Tanh, Softplus, Exp, Identity = (
    _activation(n) for n in ("silu", "gelu", "relu", "sigmoid", "tanh", "softplus", "exp", "identity"))


@dataclass(kw_only=True)
class RMSNorm(Op):
    OP: ClassVar[str] = "rmsnorm"
    eps: float = attr("float", 1e-5)
    groups: int = attr("dim", 1, doc="normalise each of `groups` equal slices of the last axis on "
                                     "its own (Mamba-2's grouped gated norm); the weight spans the axis")

    def validate(self):
        if self.eps <= 0:
            raise ShapeError("eps", f"must be > 0, got {self.eps}")
        if self.groups > 1 and self.OP != "rmsnorm":
            raise ShapeError("groups", f"op '{self.OP}' has no groups; only rmsnorm does")

    def infer(self, ins):
        expect_float(ins["x"], "x")
        if self.groups > 1:
            last = ins["x"].shape[-1] if ins["x"].rank else None
            n = D.as_int(last, {}) if last is not None and not last.symbols() else None
            if n is None or n % self.groups:
                raise ShapeError("groups", f"{self.groups} groups must divide the last axis "
                                           f"({D.render(last) if last is not None else 'none'})")
        return [ins["x"]]


@dataclass(kw_only=True)
class LayerNorm(RMSNorm):
    OP: ClassVar[str] = "layernorm"


@dataclass(kw_only=True)
class Gate(Op):
    OP: ClassVar[str] = "gate"
    DOC: ClassVar[str] = "x * act(z)"
    PORTS: ClassVar[tuple] = ("x", "z")
    fn: str = attr("str", "silu", choices=("silu", "sigmoid", "gelu", "identity"))

    def infer(self, ins):
        return [same_shape(ins, ("x", "z"))]


def _broadcast(ins: dict) -> TensorType:
    ports = list(ins)
    out = list(ins[ports[0]].shape)
    for p in ports[1:]:
        t = ins[p].shape
        if len(t) != len(out):
            raise ShapeError(p, f"rank {len(t)} does not match rank {len(out)} of input 0")
        for i, (a, b) in enumerate(zip(out, t)):
            if D.equal(a, b) or D.equal(b, num(1)):
                continue
            if D.equal(a, num(1)):
                out[i] = b
                continue
            raise ShapeError(p, f"axis {i}: {D.render(b)} does not broadcast with {D.render(a)}")
    return TensorType(tuple(out), ins[ports[0]].dtype)


@dataclass(kw_only=True)
class Add(Op):
    OP: ClassVar[str] = "add"
    VARIADIC: ClassVar[bool] = True

    def infer(self, ins):
        return [_broadcast(ins)]


@dataclass(kw_only=True)
class Mul(Add):
    OP: ClassVar[str] = "mul"


def _axis(axis: int, rank: int, port: str) -> int:
    if not -rank <= axis < rank:
        raise ShapeError(port, f"axis {axis} is out of range for rank {rank}")
    return axis % rank


@dataclass(kw_only=True)
class Split(Op):
    OP: ClassVar[str] = "split"
    sizes: list = attr("dims", doc="the size of each piece")
    axis: int = attr("int", -1)

    def n_outputs(self):
        return len(self.sizes)

    def infer(self, ins):
        t = ins["x"]
        ax = _axis(self.axis, t.rank, "x")
        if not D.equal(t.shape[ax], num(sum(self.sizes))):
            raise ShapeError("x", f"sizes {self.sizes} add up to {sum(self.sizes)}, but axis {self.axis} "
                                  f"of the input is {D.render(t.shape[ax])}")
        return [TensorType(t.shape[:ax] + (num(s),) + t.shape[ax + 1:], t.dtype) for s in self.sizes]


@dataclass(kw_only=True)
class Concat(Op):
    OP: ClassVar[str] = "concat"
    VARIADIC: ClassVar[bool] = True
    axis: int = attr("int", -1)

    def infer(self, ins):
        ports = list(ins)
        first = ins[ports[0]]
        ax = _axis(self.axis, first.rank, ports[0])
        total = first.shape[ax]
        for p in ports[1:]:
            t = ins[p]
            if t.rank != first.rank:
                raise ShapeError(p, f"rank {t.rank} does not match {first.rank}")
            for i, (a, b) in enumerate(zip(first.shape, t.shape)):
                if i != ax:
                    expect_dim(b, a, p, f"axis {i}")
            total = D.BinOp("+", total, t.shape[ax])
        return [TensorType(first.shape[:ax] + (total,) + first.shape[ax + 1:], first.dtype)]


@dataclass(kw_only=True)
class Reshape(Op):
    OP: ClassVar[str] = "reshape"
    DOC: ClassVar[str] = "split or merge trailing axes; leading (b, L) axes are kept"
    shape: list = attr("dims", doc="the new trailing shape (after batch and seqlen)")
    keep: int = attr("int", 2, doc="leading axes kept as they are")

    def infer(self, ins):
        t = ins["x"]
        if not 0 <= self.keep <= t.rank:
            raise ShapeError("keep", f"must be between 0 and rank {t.rank}")
        old = num(1)
        for s in t.shape[self.keep:]:
            old = D.BinOp("*", old, s)
        new = num(1)
        for s in self.shape:
            new = D.BinOp("*", new, num(s))
        expect_dim(old, new, "x", "number of elements in the trailing axes")
        return [TensorType(t.shape[:self.keep] + tuple(num(s) for s in self.shape), t.dtype)]


@dataclass(kw_only=True)
class Transpose(Op):
    OP: ClassVar[str] = "transpose"
    perm: list = attr("dims", doc="a permutation of the axes")

    def infer(self, ins):
        t = ins["x"]
        if sorted(self.perm) != list(range(t.rank)):
            raise ShapeError("perm", f"{self.perm} is not a permutation of 0..{t.rank - 1}")
        return [TensorType(tuple(t.shape[i] for i in self.perm), t.dtype)]


@dataclass(kw_only=True)
class Mean(Op):
    OP: ClassVar[str] = "mean"
    DOC: ClassVar[str] = "average over one axis (pooling)"
    axis: int = attr("int", 1)

    def infer(self, ins):
        t = ins["x"]
        ax = _axis(self.axis, t.rank, "x")
        return [TensorType(t.shape[:ax] + t.shape[ax + 1:], t.dtype)]


@dataclass(kw_only=True)
class Repeat(Op):
    OP: ClassVar[str] = "repeat"
    DOC: ClassVar[str] = "apply a block N times, each copy with its own parameters"
    VARIADIC: ClassVar[bool] = True
    block: str = attr("name", doc="a key of `blocks:`")
    times: int = attr("dim", doc="how many copies")

    body = None  # the block's verified Graph, attached by the verifier
    n_out = 1  # the block's output count, set by the spec reader

    def n_outputs(self):
        return self.n_out

    def validate(self):
        if self.times < 1:
            raise ShapeError("times", f"must be >= 1, got {self.times}")

    def infer(self, ins):
        body = self.body
        types = list(ins.values())
        want = list(body.inputs.values())
        if len(types) != len(want):
            raise ShapeError("inputs", f"block '{self.block}' takes {len(want)} input(s), got {len(types)}")
        for i, (t, w) in enumerate(zip(types, want)):
            if t.rank != w.rank or not all(D.equal(a, b) for a, b in zip(t.shape, w.shape)):
                raise ShapeError(str(i), f"block '{self.block}' expects {w}, got {t}")
        outs = [body.types[v] for v in body.outputs]
        if self.times > 1:
            for i, (o, w) in enumerate(zip(outs, want)):
                if o.rank != w.rank or not all(D.equal(a, b) for a, b in zip(o.shape, w.shape)):
                    raise ShapeError("times", f"block '{self.block}' output {i} is {o} but its input is "
                                              f"{w}: it cannot be chained more than once")
        return outs
