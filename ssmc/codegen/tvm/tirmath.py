"""Vectorisable fp32 math written in TIR: exp2/exp, log, softplus, silu, sin/cos.

Why not `T.exp`: TVM lowers it to a scalar libm call per lane on CPU (or to LLVM's `llvm.exp`
which becomes the same call), which costs more than the whole rest of a scan step.  Here each
function is a range reduction plus a short polynomial, made only of mul/fma/round/int-shift and
selects, so a `T.vectorized` loop turns it into straight-line AVX code and the CUDA backend into
plain FMAs.

Every function must be called while an IRBuilder frame is open (inside a loop body of a kernel
being built): intermediate values are bound with `T.Bind` so that each one is computed once
instead of being duplicated into the expression tree.

Coefficients are minimax fits (Lawson's iteratively reweighted least squares in float64; the
recipe is in `_fit_notes`).  Errors below are measured in fp32 against float64 torch on 65536
points spread over the domain (`python -m ssmc.codegen.tvm.math_probe`; the tests assert them):

=============  ==================  ===========================
function       domain              max error (fp32 vs float64)
=============  ==================  ===========================
exp2 (deg 5)   [-126, 127]         2.1e-7 relative (default)
exp2 (deg 4)   [-126, 127]         2.7e-6 relative
exp2 (deg 6)   [-126, 127]         7.4e-8 relative
exp            [-87, 88]           2.3e-7 relative
log            [1e-30, 1e30]       1.8e-7 relative
softplus       [-80, 80]           3.4e-7 relative (x > 20 -> x)
silu           [-80, 80]           2.9e-7 relative
sin, cos       [-8192, 8192]       9.4e-8 absolute
=============  ==================  ===========================

Saturation instead of inf/denormals: exp2 clamps its argument to [-126, 127] and exp to
[-87, 88], so tiny results come back as ~1e-38 (absolute error < 1.2e-38: flush-to-zero
territory) and large ones as ~1e38, never inf.  The scan calls exp2 on dt * A * log2(e) with
the product by log2(e) folded into A once per call.
"""

from __future__ import annotations

import math

import tvm.tirx as tir
from tvm.script.ir_builder import tirx as T

F32 = "float32"
I32 = "int32"

LOG2E = 1.4426950408889634
LN2 = 0.6931471805599453
LN2_HI = 0.693359375  # 9 significant bits: k * LN2_HI is exact for |k| < 2**15
LN2_LO = -2.12194440054690583e-4  # LN2 - LN2_HI

# 2**f on [-0.5, 0.5], coefficients of f**0 .. f**deg (relative minimax).
EXP2_COEFFS = {
    4: (0.9999992614376467, 0.6931218145594769, 0.2402474484144439, 0.05591786178212081,
        0.00957010187760804),
    5: (1.000000071655303, 0.6931469670628843, 0.24022119720751256, 0.055507132750645075,
        0.009675541502636026, 0.0013276471960106222),
    6: (1.0000000005541718, 0.6931472057374559, 0.2402264689060653, 0.0555032877655595,
        0.009618488958632349, 0.0013399931385388829, 0.00015345811984076446),
}
DEFAULT_EXP_DEGREE = 5

# log(m) = s * (2 + s2 * P(s2)) with s = (m - 1) / (m + 1), m in [sqrt(1/2), sqrt(2)],
# |s| <= 0.1716: the atanh series with minimax-adjusted tail (fit error 8e-10).
LOG_COEFFS = (0.6666677612867433, 0.3997756806420595, 0.2987111205601148)

# sin(r) = r + r * r2 * S(r2), cos(r) = 1 + r2 * C(r2) on |r| <= pi/4 (fit: 4e-9, 4e-8).
SIN_COEFFS = (-0.16666654607888307, 0.00833216065361865, -0.0001951526809369974)
COS_COEFFS = (-0.4999988473032958, 0.04165577606172198, -0.0013591840190827036)
# pi/2 split in three (Cody-Waite): q * PIO2_1 is exact for |q| < 2**11, so the reduction
# r = x - q * pi/2 keeps ~1e-7 absolute accuracy up to |x| ~ 8192.
PIO2_1 = 1.5703125
PIO2_2 = 4.837512969970703125e-4
PIO2_3 = 7.549789954891882e-8
TWO_OVER_PI = 2.0 / math.pi

SOFTPLUS_THRESHOLD = 20.0  # torch.nn.functional.softplus's default: x > 20 -> x


def f32(value: float):
    return tir.FloatImm(F32, float(value))


def i32(value: int):
    return tir.IntImm(I32, int(value))


class Scratch:
    """Slots for fp32 temporaries: a (slots, lanes) buffer allocated once per kernel block.

    Why not `T.Bind`: TVM 0.27's StmtSimplify substitutes each bound value into its uses, so
    a chain of temporaries (exp -> log1p -> log in softplus) grows exponentially (5 KB of TIR
    became 500 KB, 5-20 s of TVM passes per kernel).  A store to a stack buffer is not
    substituted, and LLVM turns the buffer back into registers (SROA: constant slots).
    """

    def __init__(self, buffer, slots: int):
        self.buffer = buffer
        self.slots = slots
        self.lane = None
        self.used = 0

    def put(self, value):
        if self.used >= self.slots:
            raise RuntimeError(f"tirmath.Scratch: more than {self.slots} temporaries in one "
                               "lane body; allocate more slots")
        slot = self.used
        self.used += 1
        T.buffer_store(self.buffer, value, [slot, self.lane])
        return self.buffer[slot, self.lane]


_scratch: list[Scratch] = []


class lane_scratch:
    """Context: temporaries bound inside go to `scratch` at lane index `lane` (slots are
    reused from 0 by every new lane body: bodies run one after the other)."""

    def __init__(self, scratch: Scratch | None, lane):
        self.scratch, self.lane = scratch, lane

    def __enter__(self):
        if self.scratch is not None:
            self.scratch.lane, self.scratch.used = self.lane, 0
        _scratch.append(self.scratch)
        return self.scratch

    def __exit__(self, *exc):
        _scratch.pop()


def bind(value):
    """Compute an intermediate value once and return a handle to it: a scratch slot for fp32
    values inside `lane_scratch`, else a `T.Bind` variable (integers, and callers without
    scratch such as the math probes)."""
    scratch = _scratch[-1] if _scratch else None
    if scratch is not None and str(value.ty) == F32:
        return scratch.put(value)
    return T.Bind(value)


def for_tasks(total, threads: int, task, serial: bool = False):
    """Emit task(k) for every k in [0, total) (independent tasks): one parallel iteration per
    task when threads <= 0 (TVM's pool shares them out), else `threads` parallel workers each
    taking a run of consecutive tasks; all on the calling thread when `serial`."""
    if serial:
        with T.serial(0, total) as k:
            task(k)
    elif threads <= 0:
        with T.parallel(0, total) as k:
            task(k)
    else:
        chunk = (total + threads - 1) // threads
        with T.parallel(0, threads) as p:
            with T.serial(0, chunk) as q:
                k = p * chunk + q
                with T.If(k < total):
                    with T.Then():
                        task(k)


def opaque(x):
    """x, hidden from TVM's simplifier: it rewrites float expressions algebraically (it folds
    (e + 1) - 1 into e), which would undo rounding-error corrections.  A bit-cast round trip
    is a no-op for LLVM but opaque to TVM's rewrite rules."""
    return T.reinterpret(F32, T.reinterpret(I32, x))


def horner(x, coeffs):
    """c0 + c1 x + ... + cn x^n as a chain of multiply-adds (LLVM fuses them into FMAs)."""
    acc = f32(coeffs[-1])
    for c in reversed(coeffs[:-1]):
        acc = acc * x + f32(c)
    return acc


def _scale_by_pow2(p, k_float):
    """p * 2**k for integral k (as float) by adding k to the exponent bits: valid while the
    result stays a normal float, which the callers' clamps guarantee."""
    k = tir.Cast(I32, k_float)
    bits = T.reinterpret(I32, p) + tir.LShift(k, i32(23))
    return T.reinterpret(F32, bits)


def exp2(x, degree: int = DEFAULT_EXP_DEGREE):
    """2**x: k = round(x), f = x - k in [-0.5, 0.5], 2**f by polynomial, then add k to the
    exponent bits.  x is clamped to [-126, 127] so the result is always a normal float."""
    xc = bind(tir.Max(tir.Min(x, f32(127.0)), f32(-126.0)))
    k = bind(T.round(xc))
    f = bind(xc - k)
    p = bind(horner(f, EXP2_COEFFS[degree]))
    return _scale_by_pow2(p, k)


def exp(x, degree: int = DEFAULT_EXP_DEGREE):
    """e**x.  Cody-Waite: k = round(x log2 e), r = x - k ln2 with ln2 split in a part whose
    product with k is exact and a small remainder, so r carries no rounding error from the
    large product x log2 e; then 2**(r log2 e) by exp2's polynomial.  x is clamped to
    [-87, 88] (k in [-126, 127]: the result stays a normal float)."""
    xc = bind(tir.Max(tir.Min(x, f32(88.0)), f32(-87.0)))
    k = bind(T.round(xc * f32(LOG2E)))
    r = bind(opaque(xc - k * f32(LN2_HI)) - k * f32(LN2_LO))
    p = bind(horner(r * f32(LOG2E), EXP2_COEFFS[degree]))
    return _scale_by_pow2(p, k)


def log(x):
    """Natural log of a positive normal float: x = m 2**e with m in [sqrt(1/2), sqrt(2)),
    log m through the atanh series of s = (m - 1) / (m + 1)."""
    bits = bind(T.reinterpret(I32, x))
    # Mantissa with the exponent of 1.0: m in [1, 2).
    m1 = bind(T.reinterpret(F32, tir.BitwiseOr(tir.BitwiseAnd(bits, i32(0x7FFFFF)),
                                                i32(0x3F800000))))
    e1 = tir.Cast(F32, tir.RShift(bits, i32(23)) - i32(127))
    # (booleans are not bound: TVM's analyzer cannot bind a boolean vector)
    big = m1 > f32(math.sqrt(2.0))
    m = bind(tir.Select(big, m1 * f32(0.5), m1))
    e = bind(tir.Select(big, e1 + f32(1.0), e1))
    s = bind((m - f32(1.0)) / (m + f32(1.0)))
    s2 = bind(s * s)
    logm = s * (f32(2.0) + s2 * horner(s2, LOG_COEFFS))
    return e * f32(LN2) + logm


def log1p_of(e):
    """log(1 + e) for e >= 0 without losing small e: w = 1 + e rounds, and
    log(w) * e / (w - 1) corrects for that rounding (Goldberg's trick); w == 1 -> e."""
    w = bind(opaque(e + f32(1.0)))
    wm1 = bind(w - f32(1.0))
    safe = tir.Select(wm1 == f32(0.0), f32(1.0), wm1)
    return tir.Select(wm1 == f32(0.0), e, log(w) * (e / safe))


def softplus(x, degree: int = DEFAULT_EXP_DEGREE):
    """log(1 + e**x), and x itself above torch's threshold 20 (as F.softplus)."""
    xb = bind(x)
    ex = bind(exp(tir.Min(xb, f32(SOFTPLUS_THRESHOLD)), degree))
    return tir.Select(xb > f32(SOFTPLUS_THRESHOLD), xb, log1p_of(ex))


def silu(z, degree: int = DEFAULT_EXP_DEGREE):
    """z * sigmoid(z) = z / (1 + e**-z); e**-z saturates at 2**127 so huge negative z gives -0."""
    zb = bind(z)
    return zb / (f32(1.0) + exp(-zb, degree))


def sincos(x):
    """(sin x, cos x): x = q pi/2 + r with |r| <= pi/4, polynomials for sin r and cos r, then the
    quadrant q mod 4 swaps and negates them."""
    q = bind(T.round(x * f32(TWO_OVER_PI)))
    r = bind(opaque(opaque(x - q * f32(PIO2_1)) - q * f32(PIO2_2)) - q * f32(PIO2_3))
    r2 = bind(r * r)
    s = bind(r + r * r2 * horner(r2, SIN_COEFFS))
    c = bind(f32(1.0) + r2 * horner(r2, COS_COEFFS))
    j = bind(tir.Cast(I32, q))
    swap = tir.BitwiseAnd(j, i32(1)) == i32(1)
    sin_abs = tir.Select(swap, c, s)
    cos_abs = tir.Select(swap, s, c)
    sin_neg = tir.BitwiseAnd(j, i32(2)) == i32(2)
    cos_neg = tir.BitwiseAnd(j + i32(1), i32(2)) == i32(2)
    return (tir.Select(sin_neg, -sin_abs, sin_abs), tir.Select(cos_neg, -cos_abs, cos_abs))


def _fit_notes():
    """How the coefficients were obtained (run with numpy; kept here so they can be refit):

        def lawson(xs, powers, target, rel, iters=300):
            A = np.stack([xs**k for k in powers], 1); w = np.ones_like(xs) / len(xs)
            for _ in range(iters):
                W = np.sqrt(w)[:, None]
                c = np.linalg.lstsq(A * W / rel[:, None], target / rel * W[:, 0])[0]
                err = np.abs(A @ c - target) / rel; w = w * err; w /= w.sum()
            return c, err.max()
        xs = 0.5 * np.cos(np.linspace(0, np.pi, 4001))          # exp2: target 2**xs
        r = np.linspace(1e-4, np.pi / 4, 4001)                  # sin/cos in r**2
        s = np.linspace(1e-4, 0.17158, 4001)                    # log: atanh series in s**2
    """
