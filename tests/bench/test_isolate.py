"""The child-process runner behind the torch.compile baseline: it times in the child, and a
first call over the cap is killed and reported as a timeout."""

from __future__ import annotations

from ssmc.bench.isolate import IsolatedRunner
from ssmc.bench.subject import Recipe
from ssmc.bench.timing import Policy

from .conftest import TINY_SSD

RECIPE = Recipe(subject="ssd", target="cpu", batch=1, dims=TINY_SSD)


def test_child_times_an_implementation():
    runner = IsolatedRunner(RECIPE, "eager", Policy(warmup=0, repeats=2, min_repeats=1),
                            compile_timeout_s=120)
    try:
        out = runner.run(8)
        assert out["status"] == "ok", out
        assert out["timing"]["samples"] == 2 and out["first_call_s"] > 0
        assert runner.run(16)["status"] == "ok"  # the same child answers the next length
    finally:
        runner.close()


def test_first_call_over_the_cap_is_a_timeout():
    runner = IsolatedRunner(RECIPE, "eager", Policy(warmup=0, repeats=1, min_repeats=1),
                            compile_timeout_s=0.01)  # the child cannot even import torch in time
    out = runner.run(8)
    assert out["status"] == "timeout" and "killed" in out["message"]
    assert runner.proc is None  # killed and reaped
