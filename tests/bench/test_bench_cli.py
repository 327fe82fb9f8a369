"""`ssmc bench` on the command line: bad input exits 2 with one error line; a tiny run writes
the JSON record and the plot."""

from __future__ import annotations

import json

import pytest

from ssmc.cli import main
from ssmc.paths import zoo_dir


def run(argv, capsys):
    try:
        rc = main([str(a) for a in argv])
    except SystemExit as e:
        rc = e.code
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.mark.parametrize("argv, says", [
    (["selective_scan", "--baselines", "eager,jax"], "unknown baseline 'jax'"),
    (["selective_scan", "--seqlens", "0,256"], "positive integers"),
    (["selective_scan", "--seqlens", "a,b"], "positive integers"),
    (["selective_scan", "--seqlens", ","], "positive integers"),
    (["selective_sacn"], "did you mean 'selective_scan'"),
    (["no_such_op"], "neither an op"),
    (["selective_scan", "--target", "sm_99"], "unknown target"),
    (["selective_scan", "--dim", "q=3"], "selective_scan has sizes d, N"),
    (["selective_scan", "--dtype", "int8"], "invalid choice"),
    (["selective_scan", "--repeats", "0"], "positive"),
    (["selective_scan", "--json", "/no/such/dir/b.json"], "does not exist"),
    ([zoo_dir() / "chimera.yaml"], "--dim variates="),
])
def test_bad_input_exits_2_with_one_line(argv, says, capsys):
    rc, out, err = run(["bench", *argv, "--no-progress"], capsys)
    assert rc == 2
    errors = [ln for ln in err.splitlines() if "error" in ln.lower()]
    assert len(errors) == 1, err
    assert says in errors[0]
    assert "Traceback" not in err


def test_tiny_run_writes_json_and_png(tmp_path, capsys):
    j, p = tmp_path / "b.json", tmp_path / "b.png"
    rc, out, err = run(["bench", "ssd", "--dim", "heads=2", "--dim", "head_dim=4", "--dim",
                        "d_state=4", "--dim", "chunk=8", "--batch", "1", "--seqlens", "16,8",
                        "--baselines", "eager", "--repeats", "2", "--no-progress",
                        "--json", j, "--plot", p], capsys)
    assert rc == 0, err
    assert "ssmc faster" in out
    doc = json.loads(j.read_text())
    assert [c["seqlen"] for c in doc["cases"]] == [8, 16]  # sorted
    assert doc["settings"]["baselines"] == ["eager"]
    assert p.read_bytes()[:4] == b"\x89PNG"
