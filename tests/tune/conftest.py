"""Every tune test writes its records and studies under a temporary directory: the user's
~/.cache/ssmc/records must never feed (or be fed by) a test."""

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def records_dir(tmp_path, monkeypatch):
    d = tmp_path / "records"
    monkeypatch.setenv("SSMC_RECORDS_DIR", str(d))
    return d


def ssmc_env(records_dir) -> dict:
    """The environment of an `ssmc tune` subprocess: real Triton compiles (not the test tier's
    interpreter), the test's records directory, the shared TVM kernel cache."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["SSMC_RECORDS_DIR"] = str(records_dir)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def ssmc_cmd(*args) -> list:
    return [sys.executable, "-m", "ssmc.cli", *map(str, args)]
