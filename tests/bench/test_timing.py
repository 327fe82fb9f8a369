"""The timing helper on a fake clock: warm-up calls are not timed, outliers are set aside, the
median is of the rest, slow calls get fewer repeats.  No real time is measured here."""

from __future__ import annotations

import math

from ssmc.bench.timing import Policy, drop_outliers, measure, quartiles


class FakeClock:
    """A clock that only moves when the timed function runs, by the next given duration."""

    def __init__(self, durations):
        self.now = 0.0
        self.durations = list(durations)
        self.calls = 0

    def __call__(self):
        return self.now

    def fn(self):
        self.now += self.durations[self.calls]
        self.calls += 1


def test_warmup_is_not_timed_and_median_is_of_the_samples():
    clock = FakeClock([50.0, 3.0, 1.0, 2.0])  # the 50 s first call is compilation
    t = measure(clock.fn, Policy(warmup=1, repeats=3, min_repeats=1, budget_s=1e9), clock=clock)
    assert clock.calls == 4
    assert t.samples == (3.0, 1.0, 2.0)
    assert t.median == 2.0
    assert t.first_call_s == 50.0
    assert t.warmup == 1


def test_outlier_is_dropped_from_the_median():
    durations = [1.0] + [1.0, 1.1, 0.9, 1.0, 1.05, 0.95, 30.0]
    clock = FakeClock(durations)
    t = measure(clock.fn, Policy(warmup=1, repeats=7, min_repeats=1, budget_s=1e9), clock=clock)
    assert t.outliers == 1
    assert 30.0 in t.samples and 30.0 not in t.kept
    assert t.median == 1.0  # median of the six kept samples


def test_quartiles_by_linear_interpolation():
    # positions 0.25 * 4 = 1 and 0.75 * 4 = 3 of [1, 2, 3, 4, 100]
    assert quartiles([4, 1, 100, 3, 2]) == (2, 4)
    # positions 0.75 and 2.25 of [1, 2, 3, 4]: 1.75 and 3.25
    assert quartiles([1, 2, 3, 4]) == (1.75, 3.25)
    assert quartiles([7]) == (7, 7)


def test_tukey_fences_by_hand():
    xs = [1, 2, 3, 4, 100]  # Q1 2, Q3 4, IQR 2: fences -1 and 7
    assert drop_outliers(xs) == (1, 2, 3, 4)
    assert drop_outliers([1, 50, 100]) == (1, 50, 100)  # too few samples to judge


def test_budget_limits_repeats_of_slow_calls_but_not_below_the_minimum():
    policy = Policy(warmup=1, repeats=10, min_repeats=3, budget_s=20.0)
    slow = FakeClock([60.0] * 4)
    assert len(measure(slow.fn, policy, clock=slow).samples) == 3
    medium = FakeClock([4.0] * 11)  # 5 samples make the 20 s budget
    assert len(measure(medium.fn, policy, clock=medium).samples) == 5
    fast = FakeClock([0.001] * 11)
    assert len(measure(fast.fn, policy, clock=fast).samples) == 10


def test_a_slow_first_call_does_not_cut_the_repeats():
    clock = FakeClock([100.0] + [0.01] * 10)  # the warm-up call compiles for 100 s
    t = measure(clock.fn, Policy(warmup=1, repeats=10, budget_s=20.0), clock=clock)
    assert len(t.samples) == 10 and t.first_call_s == 100.0


def test_no_warmup_times_every_call_and_sync_brackets_each_call():
    clock = FakeClock([2.0, 4.0])
    synced = []
    t = measure(clock.fn, Policy(warmup=0, repeats=2, min_repeats=1), clock=clock,
                sync=lambda: synced.append(clock.now))
    assert t.samples == (2.0, 4.0)
    assert math.isnan(t.first_call_s)
    assert len(synced) == 4  # before and after each call
    d = t.as_dict()
    assert d["first_call_s"] is None and d["median_s"] == 3.0 and d["samples"] == 2
