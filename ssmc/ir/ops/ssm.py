"""The SSM node kinds (MODELS.md): diagonal, selective (mamba1 / ssd / dense), 2-D, nested
recursion, and the general nonlinear recurrence.  Each declares the algorithms it can run with
and, for the ones it cannot, why."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ssmc.ir import dims as D
from ssmc.ir.graph import TensorType
from ssmc.ir.ops.base import (Op, ShapeError, attr, expect_dim, expect_float, expect_rank, num,
                              same_shape, with_last)

NOT_2D = "it is a 1-D recurrence; the wavefront/axis algorithms are for 2-D grids"


def _seq(ins: dict, port: str) -> TensorType:
    t = ins[port]
    expect_rank(t, port, 3)
    expect_float(t, port)
    return t


@dataclass(kw_only=True)
class DiagonalSSM(Op):
    OP: ClassVar[str] = "diagonal_ssm"
    DOC: ClassVar[str] = "S4D: time-invariant diagonal SSM, (b, L, d) -> (b, L, d)"
    PORTS: ClassVar[tuple] = ("u",)
    ALGORITHMS: ClassVar[tuple] = ("sequential", "fft", "chunked", "associative")
    REJECTED: ClassVar[dict] = {"wavefront": NOT_2D, "axis": NOT_2D,
                                "tree": "it is a linear scan, not a tree reduction"}
    d_state: int = attr("dim")
    complex: bool = attr("bool", True)
    discretization: str = attr("str", "zoh", choices=("zoh", "bilinear"))
    init: str = attr("str", "lin", choices=("lin", "inv", "real", "legs"))
    parameterization: str = attr("str", "s4d", choices=("s4d", "polar"))
    conj_pair: bool = attr("bool", True)
    learn_dt: bool = attr("bool", True)
    dt_min: float = attr("float", 1e-3)
    dt_max: float = attr("float", 1e-1)
    D: bool = attr("bool", True)

    def validate(self):
        if self.d_state < 1:
            raise ShapeError("d_state", f"must be >= 1, got {self.d_state}")
        if not 0 < self.dt_min <= self.dt_max:
            raise ShapeError("dt_min", f"need 0 < dt_min <= dt_max, got {self.dt_min}, {self.dt_max}")
        # As semantics.modules_ssm.DiagonalSSM enforces them (S4D-Real may also seed a complex A):
        if not self.complex and self.init != "real":
            raise ShapeError("init", f"init '{self.init}' gives a complex A; it needs complex: true "
                                     "(a real state takes init: real)")
        if not self.complex and self.parameterization == "polar":
            raise ShapeError("parameterization", "'polar' needs complex: true")
        if self.complex and self.conj_pair and self.d_state % 2:
            raise ShapeError("d_state", f"must be even with complex and conj_pair (N/2 conjugate pairs), "
                                        f"got {self.d_state}")

    @property
    def n_modes(self) -> int:
        """The diagonal states stored: d_state / 2 conjugate pairs with complex conj_pair."""
        return self.d_state // 2 if self.complex and self.conj_pair else self.d_state

    def infer(self, ins):
        return [_seq(ins, "u")]


_VARIANT_ATTRS = {
    "mamba1": {"groups", "complex", "delta_bias", "delta_softplus", "conj_pair", "start", "dt_min",
               "dt_max", "D", "final_state"},
    "ssd": {"heads", "groups", "dt_limit", "chunk_size", "delta_bias", "delta_softplus", "dt_min",
            "dt_max", "D", "final_state"},
    "dense": {"block", "transition", "D"},
}


@dataclass(kw_only=True)
class SelectiveSSM(Op):
    OP: ClassVar[str] = "selective_ssm"
    DOC: ClassVar[str] = "input-dependent SSM: Mamba-1 (mamba1), Mamba-2 (ssd), linear CDE (dense)"
    ALGORITHMS: ClassVar[tuple] = ("sequential", "associative", "chunked")
    REJECTED: ClassVar[dict] = {
        "fft": "its transition depends on the input, so it is not a convolution",
        "wavefront": NOT_2D, "axis": NOT_2D, "tree": "it is a linear scan, not a tree reduction"}
    variant: str = attr("str", "mamba1", choices=("mamba1", "ssd", "dense"))
    d_state: int = attr("dim")
    groups: int = attr("dim", 1, doc="B/C groups (mamba1, ssd)")
    complex: bool = attr("bool", False, doc="complex A (mamba1)")
    delta_bias: bool = attr("bool", True)
    delta_softplus: bool = attr("bool", True)
    D: bool = attr("bool", True, doc="skip connection D * x")
    conj_pair: bool = attr("bool", False, doc="complex A: y = 2 Re <C, h> instead of Re")
    final_state: bool = attr("bool", False, doc="also output the last state")
    dt_min: float = attr("float", 1e-3)
    dt_max: float = attr("float", 1e-1)
    start: dict = attr("mapping", optional=True, doc="START perturbation: {k, mode, sigma}")
    heads: int = attr("dim", optional=True, doc="ssd: number of heads")
    chunk_size: int = attr("dim", optional=True, doc="ssd: chunk length (tuned when absent)")
    dt_limit: list = attr("floats", optional=True, doc="ssd: [lo, hi] clamp of dt")
    block: int = attr("dim", optional=True, doc="dense: block size of a block-diagonal transition")
    transition: str = attr("str", "linear", choices=("linear", "expm"), doc="dense: A(x) form")

    def ports(self):
        return {"mamba1": ("x", "delta", "B", "C"), "ssd": ("x", "dt", "B", "C"),
                "dense": ("x",)}[self.variant]

    def optional_ports(self):
        return () if self.variant == "dense" else ("z", "initial_state")

    def n_outputs(self):
        return 2 if self.final_state and self.variant != "dense" else 1

    def validate(self):
        stray = sorted(self.given - _VARIANT_ATTRS[self.variant] - {"variant", "d_state"})
        if stray:
            raise ShapeError(stray[0], f"is not an attribute of variant '{self.variant}' "
                                       f"(it takes: {', '.join(sorted(_VARIANT_ATTRS[self.variant]))})")
        if self.d_state < 1 or self.groups < 1:
            raise ShapeError("d_state", "d_state and groups must be >= 1")
        if not 0 < self.dt_min <= self.dt_max:
            raise ShapeError("dt_min", f"need 0 < dt_min <= dt_max, got {self.dt_min}, {self.dt_max}")
        if self.variant == "ssd" and not self.heads:
            raise ShapeError("heads", "variant 'ssd' needs heads (the number of heads)")
        if self.dt_limit is not None and (len(self.dt_limit) != 2 or not 0 <= self.dt_limit[0] <= self.dt_limit[1]):
            raise ShapeError("dt_limit", f"expected [lo, hi] with 0 <= lo <= hi, got {self.dt_limit}")
        if self.start is not None:
            # The same rules as semantics.modules_ssm (which raises ValueError): check them here,
            # where the error can name the spec's line.
            bad = sorted(set(self.start) - {"k", "mode", "sigma"})
            if bad:
                raise ShapeError("start", f"unknown key '{bad[0]}' (expected k, mode, sigma)")
            k = self.start.get("k")
            if isinstance(k, bool) or not isinstance(k, int) or k < 0:
                raise ShapeError("start", f"k (tokens perturbed) must be an integer >= 0, got {k!r}")
            if self.start.get("mode", "noise") not in ("noise", "drop"):
                raise ShapeError("start", f"mode must be 'noise' or 'drop', got {self.start.get('mode')!r}")
            sigma = self.start.get("sigma", 0.1)
            if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not 0 <= sigma < float("inf"):
                raise ShapeError("start", f"sigma must be a number >= 0, got {sigma!r}")

    def infer(self, ins):
        x = _seq(ins, "x")
        b, L, d = x.shape
        if self.variant == "dense":
            if self.block and int(self.d_state) % int(self.block):
                raise ShapeError("block", f"d_state {self.d_state} is not a multiple of block {self.block}")
            return [x]
        gn = num(self.groups * self.d_state)
        for port in ("B", "C"):
            t = _seq(ins, port)
            expect_dim(t.shape[0], b, port, "batch")
            expect_dim(t.shape[1], L, port, "seqlen")
            expect_dim(t.shape[2], gn, port, "last axis (groups * d_state)")
        if "z" in ins:
            same_shape(ins, ("x", "z"))
        if self.variant == "mamba1":
            same_shape(ins, ("x", "delta"))
            if not D.equal(D.BinOp("%", d, num(self.groups)), num(0)):
                raise ShapeError("x", f"channels {D.render(d)} are not a multiple of groups {self.groups}")
            state = TensorType((b, d, num(self.d_state)), "complex64" if self.complex else "float32")
        else:
            h = num(self.heads)
            dt = _seq(ins, "dt")
            expect_dim(dt.shape[2], h, "dt", "last axis (heads)")
            if not D.equal(D.BinOp("%", d, h), num(0)):
                raise ShapeError("x", f"channels {D.render(d)} are not a multiple of heads {self.heads}")
            if self.heads % self.groups:
                raise ShapeError("groups", f"heads {self.heads} is not a multiple of groups {self.groups}")
            state = TensorType((b, h, D.BinOp("//", d, h), num(self.d_state)), "float32")
        if "initial_state" in ins:
            t = ins["initial_state"]
            if t.rank != state.rank or not all(D.equal(a, c) for a, c in zip(t.shape, state.shape)):
                raise ShapeError("initial_state", f"expected {state}, got {t}")
        return [x, state][: self.n_outputs()]


@dataclass(kw_only=True)
class SSM2D(Op):
    OP: ClassVar[str] = "ssm2d"
    DOC: ClassVar[str] = "Chimera 2-D SSM over (time, variate): (b, T, V, d) -> (b, T, V, d)"
    ALGORITHMS: ClassVar[tuple] = ("wavefront", "axis", "sequential")
    REJECTED: ClassVar[dict] = {"fft": "the 2-D recurrence has coupled axes; no 1-D convolution",
                                "tree": "it is a linear recurrence, not a tree reduction"}
    d_state: int = attr("dim")
    selective: bool = attr("bool", False)
    bidirectional: bool = attr("bool", True, doc="run the variate axis both ways and sum")
    dt_min: float = attr("float", 1e-3)
    dt_max: float = attr("float", 1e-1)

    def validate(self):
        if self.d_state < 1:
            raise ShapeError("d_state", f"must be >= 1, got {self.d_state}")
        if not 0 < self.dt_min <= self.dt_max:
            raise ShapeError("dt_min", f"need 0 < dt_min <= dt_max, got {self.dt_min}, {self.dt_max}")

    def infer(self, ins):
        expect_rank(ins["x"], "x", 4)
        expect_float(ins["x"], "x")
        return [ins["x"]]


@dataclass(kw_only=True)
class NestedRecursion(Op):
    OP: ClassVar[str] = "nested_recursion"
    DOC: ClassVar[str] = "RIR / BBT: chunked balanced trees of GRC cells, (b, L, d) -> (b, d)"
    ALGORITHMS: ClassVar[tuple] = ("tree", "sequential")
    REJECTED: ClassVar[dict] = {
        "associative": "the GRC cell is not associative: the tree shape is part of the meaning",
        "chunked": "the GRC cell is not associative: chunk results cannot be combined as a scan",
        "fft": "the GRC cell is nonlinear", "wavefront": NOT_2D, "axis": NOT_2D}
    chunk: int = attr("dim", optional=True, doc="chunk size k (chosen by the cost model when absent)")
    inner: str = attr("str", "bbt", choices=("bbt", "rnn", "beam"))
    beam: int = attr("dim", 7)

    def validate(self):
        if self.chunk is not None and self.chunk < 2:
            raise ShapeError("chunk", f"must be >= 2, got {self.chunk}")
        if self.beam < 1:
            raise ShapeError("beam", f"must be >= 1, got {self.beam}")

    def infer(self, ins):
        x = _seq(ins, "x")
        return [TensorType((x.shape[0], x.shape[2]), x.dtype)]


@dataclass(kw_only=True)
class Recurrence(Op):
    OP: ClassVar[str] = "recurrence"
    DOC: ClassVar[str] = "a general nonlinear cell (PLRNN): (b, L, d_in) -> (b, L, latent)"
    PORTS: ClassVar[tuple] = ("s",)
    ALGORITHMS: ClassVar[tuple] = ("sequential",)
    _WHY: ClassVar[str] = ("the cell z_t = A z + W relu(z) + h0 + C s_t is nonlinear in z, so two "
                           "steps do not compose into one step of the same form: there is no "
                           "associative operator; only 'sequential' is valid")
    REJECTED: ClassVar[dict] = {"associative": _WHY, "chunked": _WHY, "fft": _WHY, "tree": _WHY,
                                "wavefront": NOT_2D, "axis": NOT_2D}
    cell: str = attr("str", "plrnn", choices=("plrnn",))
    latent: int = attr("dim", doc="latent state size")

    def validate(self):
        if self.latent < 1:
            raise ShapeError("latent", f"must be >= 1, got {self.latent}")

    def infer(self, ins):
        return [with_last(_seq(ins, "s"), self.latent)]
