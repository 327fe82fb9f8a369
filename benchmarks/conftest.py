"""The pytest-benchmark suite (`make bench`): the cases of `ssmc bench`, built by the same code
(ssmc.bench's subjects), so the two agree on what is timed.

Files are named bench_*.py so that the default test run (testpaths = tests) never collects them
and, even when pointed here, pytest's own test_*.py pattern would not; the hook below collects
them when this directory is named (`pytest benchmarks --benchmark-only`).
"""

from __future__ import annotations

import fnmatch
import os

import pytest

os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")


def pytest_collect_file(file_path, parent):
    if file_path.suffix != ".py" or not file_path.name.startswith("bench_"):
        return None
    # Collected already when the user widened python_files (-o python_files=bench_*.py) or
    # named the file on the command line (pytest collects those whatever their name).
    if parent.session.isinitpath(file_path) or any(
            fnmatch.fnmatch(file_path.name, pat) for pat in parent.config.getini("python_files")):
        return None
    return pytest.Module.from_parent(parent, path=file_path)


@pytest.fixture(scope="session")
def subjects():
    """Recipe -> subject, made once per session (a model subject lowers its graph once)."""
    from ssmc.bench.subject import make_subject

    cache = {}

    def get(recipe):
        if recipe not in cache:
            cache[recipe] = make_subject(recipe)
        return cache[recipe]

    return get


def impl_of(subject, name: str):
    baselines = [] if name == "ssmc" else [name]
    return next(i for i in subject.impls(baselines) if i.name == name)
