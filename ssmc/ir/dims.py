"""Dimension arithmetic: a small recursive-descent parser, never eval.

Grammar:  expr := term (('+' | '-') term)* ;  term := unary (('*' | '/' | '//' | '%') unary)* ;
unary := '-' unary | power ;  power := atom ('**' unary)? ;
atom := INT | NAME | NAME '(' expr (',' expr)* ')' | '(' expr ')'.
Functions: ceil, floor, min, max, pow2 (next power of two).  Values are exact fractions, so
`ceil(d_model/16)` is exact; a dimension must end up a non-negative integer.  Names left unbound
(batch, seqlen) stay symbolic.
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass
from fractions import Fraction

MAX_DIM = 2**40  # bigger than any real tensor dimension; stops 10**10**10 and friends
MAX_TOKENS = 200  # real expressions are a few tokens; this bounds the tree depth (eval recurses)
# [0-9], not \d: \d also matches other scripts' digits (int() would quietly accept them).
_TOKEN = re.compile(r"\s*(?:([0-9]+)|([A-Za-z_][A-Za-z_0-9]*)|(\*\*|//|[-+*/%(),]))")


class DimError(ValueError):
    """A malformed or out-of-range dimension expression (the spec loader adds file:line)."""


class Unbound(DimError):
    def __init__(self, name: str):
        self.name = name
        super().__init__(f"unknown dimension '{name}'")


class Expr:
    def eval(self, env: dict) -> Fraction:
        raise NotImplementedError

    def symbols(self) -> set[str]:
        raise NotImplementedError


@dataclass(frozen=True)
class Num(Expr):
    value: Fraction

    def eval(self, env):
        return self.value

    def symbols(self):
        return set()

    def __str__(self):
        return str(self.value)


@dataclass(frozen=True)
class Sym(Expr):
    name: str

    def eval(self, env):
        if self.name not in env:
            raise Unbound(self.name)
        v = env[self.name]
        return v.eval(env) if isinstance(v, Expr) else Fraction(v)

    def symbols(self):
        return {self.name}

    def __str__(self):
        return self.name


def _magnitude(v: Fraction) -> str:
    """Rough size for a message; float(v) overflows for huge v, so go through the bit length."""
    bits = abs(v.numerator).bit_length() - v.denominator.bit_length()
    return f"{float(v):.3g}" if bits < 1000 else f"about 2**{bits}"


def _checked(v: Fraction) -> Fraction:
    # Denominators are bounded too: 1/(x*x*...) with tiny x would otherwise blow up later.
    if abs(v) > MAX_DIM or v.denominator > MAX_DIM:
        what = _magnitude(v) if abs(v) > MAX_DIM else f"{_magnitude(v)} (denominator too large)"
        raise DimError(f"value {what} is out of range (|value| <= 2**40)")
    return v


def _pow(a: Fraction, b: Fraction) -> Fraction:
    if b.denominator != 1 or b < 0 or b > 64:
        raise DimError("'**' takes a whole exponent between 0 and 64")
    # Bound the result's size before computing it (numerator and denominator: (1/3)**64 too).
    # |a| < 2**(bits) where bits = bit_length, so (bits - 1) * b <= 41 keeps it under 2**105.
    if int(b) * (max(abs(a.numerator).bit_length(), a.denominator.bit_length()) - 1) > 41:
        raise DimError("'**' result is out of range")
    return a ** int(b)


def _div(a: Fraction, b: Fraction) -> Fraction:
    if b == 0:
        raise DimError("division by zero")
    return a / b


def _floordiv(a: Fraction, b: Fraction) -> Fraction:
    if b == 0:
        raise DimError("division by zero")
    return Fraction(a // b)


def _mod(a: Fraction, b: Fraction) -> Fraction:
    if b == 0:
        raise DimError("modulo by zero")
    return a % b


_BINOPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b,
           "/": _div, "//": _floordiv, "%": _mod, "**": _pow}


def _pow2(x: Fraction) -> Fraction:
    n = max(1, math.ceil(x))
    return Fraction(1 << (n - 1).bit_length())


_FUNCS = {"ceil": (1, lambda x: Fraction(math.ceil(x))), "floor": (1, lambda x: Fraction(math.floor(x))),
          # min(*args), not min(args...): min(x) with one argument would iterate over x
          "min": (None, lambda *a: min(a)), "max": (None, lambda *a: max(a)), "pow2": (1, _pow2)}


@dataclass(frozen=True)
class BinOp(Expr):
    op: str
    a: Expr
    b: Expr

    def eval(self, env):
        return _checked(_BINOPS[self.op](self.a.eval(env), self.b.eval(env)))

    def symbols(self):
        return self.a.symbols() | self.b.symbols()

    def __str__(self):
        return f"({self.a} {self.op} {self.b})"


@dataclass(frozen=True)
class Neg(Expr):
    a: Expr

    def eval(self, env):
        return -self.a.eval(env)

    def symbols(self):
        return self.a.symbols()

    def __str__(self):
        return f"-{self.a}"


@dataclass(frozen=True)
class Call(Expr):
    fn: str
    args: tuple

    def eval(self, env):
        return _checked(_FUNCS[self.fn][1](*(a.eval(env) for a in self.args)))

    def symbols(self):
        return set().union(*(a.symbols() for a in self.args))

    def __str__(self):
        return f"{self.fn}({', '.join(map(str, self.args))})"


class _Parser:
    def __init__(self, text: str):
        self.text = text
        self.toks: list[tuple[str, str]] = []
        pos = 0
        text = text.rstrip()
        while pos < len(text):
            m = _TOKEN.match(text, pos)
            if not m or m.end() == pos:
                raise DimError(f"unexpected character {text[pos:].strip()[:1]!r} in {self.text!r}")
            num, name, op = m.groups()
            self.toks.append(("num", num) if num else ("name", name) if name else ("op", op))
            pos = m.end()
            if len(self.toks) > MAX_TOKENS:
                raise DimError(f"expression longer than {MAX_TOKENS} tokens")
        self.i = 0
        self.depth = 0

    def peek(self):
        return self.toks[self.i] if self.i < len(self.toks) else ("end", "")

    def take(self, value=None):
        tok = self.peek()
        if value is not None and tok[1] != value:
            got = tok[1] or "end of expression"
            raise DimError(f"expected '{value}' but found '{got}' in {self.text!r}")
        self.i += 1
        return tok

    def parse(self) -> Expr:
        if not self.toks:
            raise DimError("empty dimension expression")
        e = self.expr()
        if self.peek()[0] != "end":
            raise DimError(f"unexpected '{self.peek()[1]}' in {self.text!r}")
        return e

    def expr(self):
        self.depth += 1
        if self.depth > 50:
            raise DimError("expression nested too deeply")
        e = self.term()
        while self.peek()[1] in ("+", "-"):
            op = self.take()[1]
            e = BinOp(op, e, self.term())
        self.depth -= 1
        return e

    def term(self):
        e = self.unary()
        while self.peek()[1] in ("*", "/", "//", "%"):
            op = self.take()[1]
            e = BinOp(op, e, self.unary())
        return e

    def unary(self):
        if self.peek()[1] == "-":
            self.take()
            self.depth += 1
            if self.depth > 50:
                raise DimError("expression nested too deeply")
            e = Neg(self.unary())
            self.depth -= 1
            return e
        return self.power()

    def power(self):
        e = self.atom()
        if self.peek()[1] == "**":
            self.take()
            e = BinOp("**", e, self.unary())
        return e

    def atom(self):
        kind, val = self.peek()
        if kind == "num":
            self.take()
            if len(val) > 13:
                raise DimError(f"number {val[:20]}... is out of range (<= 2**40)")
            return Num(_checked(Fraction(int(val))))
        if kind == "name":
            self.take()
            if self.peek()[1] == "(":
                if val not in _FUNCS:
                    raise DimError(f"unknown function '{val}' (known: {', '.join(sorted(_FUNCS))})")
                self.take("(")
                args = [self.expr()]
                while self.peek()[1] == ",":
                    self.take()
                    args.append(self.expr())
                self.take(")")
                arity = _FUNCS[val][0]
                if arity is not None and len(args) != arity:
                    raise DimError(f"{val}() takes {arity} argument(s), got {len(args)}")
                return Call(val, tuple(args))
            return Sym(val)
        if val == "(":
            self.take()
            e = self.expr()
            self.take(")")
            return e
        raise DimError(f"expected a number, a name or '(' but found '{val or 'end of expression'}' in {self.text!r}")


def parse(value) -> Expr:
    """A YAML scalar (int or string) -> Expr."""
    if isinstance(value, bool):
        raise DimError(f"expected a dimension (integer or expression), got {value!r}")
    if isinstance(value, int):
        return Num(_checked(Fraction(value)))
    if isinstance(value, float) and value.is_integer():
        return Num(_checked(Fraction(int(value))))
    if isinstance(value, str):
        return _Parser(value).parse()
    kind = "a list" if isinstance(value, list) else "a mapping" if isinstance(value, dict) else type(value).__name__
    raise DimError(f"expected a dimension (integer or expression), got {kind} {value!r}"[:200])


def as_int(e: Expr, env: dict) -> int:
    """Evaluate to a non-negative integer."""
    v = e.eval(env)
    if v.denominator != 1:
        raise DimError(f"{e} = {float(v):g} is not a whole number (use ceil() or floor())")
    if v < 0:
        raise DimError(f"{e} = {v} is negative")
    return int(v)


def substitute(e: Expr, env: dict) -> Expr:
    """Fold every bound name into a constant; unbound names (symbolic dims) stay."""
    try:
        return Num(e.eval(env))
    except Unbound:
        pass
    if isinstance(e, BinOp):
        return BinOp(e.op, substitute(e.a, env), substitute(e.b, env))
    if isinstance(e, Neg):
        return Neg(substitute(e.a, env))
    if isinstance(e, Call):
        return Call(e.fn, tuple(substitute(a, env) for a in e.args))
    return e


def equal(a: Expr, b: Expr, env: dict | None = None) -> bool:
    """Equality of two dimension expressions, symbolic dims included: compared under several
    random assignments of the free symbols (exact for the linear arithmetic specs use)."""
    if a == b:  # the same expression (batch**6 is batch**6 even where trial values overflow)
        return True
    env = dict(env or {})
    free = sorted((a.symbols() | b.symbols()) - set(env))
    rng = random.Random(1234)
    for hi in (10_000, 64):  # small trial values when large ones go out of range
        try:
            for _ in range(4 if free else 1):
                trial = dict(env)
                trial.update({s: rng.randrange(2, hi) for s in free})
                if a.eval(trial) != b.eval(trial):
                    return False
            return True
        except DimError:
            continue
    return False


def render(e: Expr) -> str:
    s = str(e)
    return s[1:-1] if s.startswith("(") and s.endswith(")") and s.count("(") == 1 else s
