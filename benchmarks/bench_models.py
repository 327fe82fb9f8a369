"""Whole models: ssmc.compile of a spec against its eager reference model.

mamba.yaml at L 2048 is issue 5's target (ssmc at least 5x faster than eager).  Every zoo spec
runs too, at L 512: where the target has no kernel for a model's SSM nodes the compiled model
runs the reference there and measures about 1x (extra_info["kernels"] says which).
"""

from __future__ import annotations

import pytest

from ssmc.bench.subject import Recipe
from ssmc.paths import zoo_dir

from .conftest import impl_of

ZOO = sorted(p.stem for p in zoo_dir().glob("*.yaml"))
EXTRA_DIMS = {"chimera": {"variates": 8}}  # run-time dims other than batch and seqlen


def _recipe(name: str) -> Recipe:
    return Recipe(subject=str(zoo_dir() / f"{name}.yaml"), target="cpu", batch=2,
                  dims=EXTRA_DIMS.get(name, {}))


def _run(benchmark, subject, name, length, rounds):
    call = impl_of(subject, name).build(length)
    call()  # kernel builds / cache loads stay outside the timing
    if name == "ssmc":
        benchmark.extra_info["kernels"] = subject.ssmc_label()[0]
    benchmark.pedantic(call, rounds=rounds, iterations=1, warmup_rounds=1)


@pytest.mark.benchmark(group="mamba.yaml forward b2 L2048 fp32")
@pytest.mark.parametrize("name", ["ssmc", "eager"])
def test_mamba_L2048(benchmark, subjects, name):
    _run(benchmark, subjects(_recipe("mamba")), name, 2048, rounds=10 if name == "ssmc" else 3)


@pytest.mark.parametrize("model", ZOO)
@pytest.mark.parametrize("name", ["ssmc", "eager"])
def test_zoo_L512(benchmark, subjects, model, name):
    benchmark.group = f"zoo {model} forward b2 L512 fp32"
    _run(benchmark, subjects(_recipe(model)), name, 512, rounds=3)
