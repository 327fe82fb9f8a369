"""examples/train_tiny_mamba.py runs (a few steps here; the full run is the slow-marked test):
it prints both loss curves and the speed ratio, and the curves agree."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "train_tiny_mamba.py"


def _example():
    spec = importlib.util.spec_from_file_location("train_tiny_mamba", EXAMPLE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_text_ships_with_the_example():
    data = EXAMPLE.parent / "data" / "tiny.txt"
    assert 2000 < data.stat().st_size < 20000
    assert data.read_bytes().isascii()


def test_example_smoke(capsys):
    rc = _example().main(["--steps", "5", "--every", "2", "--batch", "2", "--seqlen", "16",
                          "--d-model", "32", "--layers", "1", "--d-state", "16",
                          "--threads", "1"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "eager" in out and "compiled" in out and "speed ratio (eager / compiled)" in out
    rows = [line.split() for line in out.splitlines() if line.strip()[:1].isdigit()]
    assert [int(r[0]) for r in rows] == [0, 2, 4]
    for _, eager, compiled, _diff in rows:
        assert abs(float(eager) - float(compiled)) < 1e-3


@pytest.mark.slow
def test_example_full_run(capsys):
    rc = _example().main(["--threads", "1"])
    out = capsys.readouterr().out
    assert rc == 0, out
