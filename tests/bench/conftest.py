"""A tiny benchmark record shared by the schema, table and plot tests: the SSD op (no TVM
kernel is built for it on a CPU, so the record takes seconds) at two short lengths."""

from __future__ import annotations

import pytest

from ssmc.bench import harness
from ssmc.bench.subject import Recipe
from ssmc.bench.timing import Policy

TINY_SSD = {"heads": 2, "head_dim": 4, "d_state": 4, "groups": 1, "chunk": 8}


@pytest.fixture(scope="session")
def tiny_doc():
    recipe = Recipe(subject="ssd", target="cpu", batch=1, dims=TINY_SSD)
    settings = harness.Settings(seqlens=(8, 16), baselines=("eager", "assoc", "mamba_ssm"),
                                policy=Policy(warmup=1, repeats=3, min_repeats=1),
                                progress=False)
    return harness.run(recipe, settings, argv=["ssmc", "bench", "ssd"])
