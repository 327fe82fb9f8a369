"""Timing one callable: warm-up calls, then repeated timed calls, outliers set aside, the median.

The median of the kept samples is the figure every report uses: on a shared machine a few calls
land on a busy core and take much longer, and the median ignores them where a mean would not.
Samples outside Tukey's fences (below Q1 - 1.5 IQR or above Q3 + 1.5 IQR) are counted as
outliers and left out of the median; all samples are kept in the record so nothing is hidden.

The clock is a parameter so that tests can drive the whole procedure with a fake clock.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass
from typing import Callable

TUKEY_K = 1.5


@dataclass(frozen=True)
class Timing:
    samples: tuple  # every timed call, seconds, in the order they ran
    kept: tuple  # the samples inside the fences
    warmup: int  # untimed calls made first
    first_call_s: float  # the first warm-up call (compilation, caches), or nan with no warm-up

    @property
    def median(self) -> float:
        return statistics.median(self.kept)

    @property
    def outliers(self) -> int:
        return len(self.samples) - len(self.kept)

    @property
    def minimum(self) -> float:
        return min(self.samples)

    @property
    def iqr(self) -> float:
        q1, q3 = quartiles(self.samples)
        return q3 - q1

    def as_dict(self) -> dict:
        return {"median_s": self.median, "min_s": self.minimum, "iqr_s": self.iqr,
                "samples": len(self.samples), "outliers": self.outliers, "warmup": self.warmup,
                "first_call_s": None if math.isnan(self.first_call_s) else self.first_call_s,
                "times_s": list(self.samples)}


def quartiles(xs) -> tuple:
    """(Q1, Q3) by linear interpolation between order statistics (numpy's default)."""
    s = sorted(xs)
    if len(s) == 1:
        return s[0], s[0]

    def q(p):
        pos = p * (len(s) - 1)
        lo = math.floor(pos)
        hi = min(lo + 1, len(s) - 1)
        return s[lo] + (s[hi] - s[lo]) * (pos - lo)

    return q(0.25), q(0.75)


def drop_outliers(samples) -> tuple:
    """The samples inside Tukey's fences.  With fewer than four samples the quartiles mean
    little, so every sample is kept."""
    if len(samples) < 4:
        return tuple(samples)
    q1, q3 = quartiles(samples)
    lo, hi = q1 - TUKEY_K * (q3 - q1), q3 + TUKEY_K * (q3 - q1)
    return tuple(x for x in samples if lo <= x <= hi)


@dataclass
class Policy:
    """How many calls to make: `warmup` untimed calls, then timed calls until there are
    `repeats` samples or the samples add up to `budget_s`, but never fewer than `min_repeats`.
    A 30 s eager loop gets 3 samples, a 1 ms kernel gets `repeats`.  Stopping on the time
    already spent, rather than predicting it from a warm-up call, keeps a first call that
    compiles from cutting the repeats short."""

    warmup: int = 1
    repeats: int = 10
    min_repeats: int = 3
    budget_s: float = 20.0

    def enough(self, samples) -> bool:
        n = len(samples)
        if n >= self.repeats:
            return True
        return n >= self.min_repeats and sum(samples) >= self.budget_s


def measure(fn: Callable[[], object], policy: Policy | None = None, *,
            clock: Callable[[], float] = time.perf_counter,
            sync: Callable[[], None] | None = None) -> Timing:
    """Time `fn()`.  `sync` (e.g. torch.cuda.synchronize) runs before each clock read so that
    asynchronous device work is inside the timed interval."""
    policy = policy or Policy()
    sync = sync or (lambda: None)

    def timed_call() -> float:
        sync()
        t0 = clock()
        fn()
        sync()
        return clock() - t0

    warm = [timed_call() for _ in range(policy.warmup)]
    samples = []
    while not policy.enough(samples):
        samples.append(timed_call())
    return Timing(samples=tuple(samples), kept=drop_outliers(samples), warmup=policy.warmup,
                  first_call_s=warm[0] if warm else math.nan)
