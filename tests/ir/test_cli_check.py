"""`ssmc check`: the zoo checks clean; a bad spec is exit code 2 with one line on stderr
(file:line, the field, "did you mean") and never a traceback."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ssmc.cli import main
from ssmc.paths import zoo_dir

ZOO_FILES = sorted(zoo_dir().glob("*.yaml"))

# `check` also builds the reference module (parameter count); its failures there belong to
# ssmc.semantics, not to the spec language.  Known gaps, non-strict so they pass once fixed:
REFERENCE_GAPS: dict = {}  # spec stem -> reason

BAD = textwrap.dedent("""\
    name: bad
    dims:
      d: 8
    inputs:
      x: {shape: [batch, seqlen, d]}
    nodes:
      - {name: a, op: linear, inptus: [x], out: d}
    outputs: [a]
    """)


def _zoo_param(p: Path):
    marks = [pytest.mark.xfail(strict=False, reason=REFERENCE_GAPS[p.stem])] if p.stem in REFERENCE_GAPS else []
    return pytest.param(p, id=p.stem, marks=marks)


def _reference_available() -> str | None:
    try:
        import ssmc.semantics.modules_misc  # noqa: F401
        import ssmc.semantics.modules_ssm  # noqa: F401
    except ModuleNotFoundError as e:
        return f"reference modules not there yet: {e}"
    return None


needs_reference = pytest.mark.xfail(_reference_available() is not None, strict=False,
                                    reason=_reference_available() or "")


@needs_reference
@pytest.mark.parametrize("path", [_zoo_param(p) for p in ZOO_FILES])
def test_check_zoo_spec(path, capsys):
    rc = main(["check", str(path)])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert out.split()[0] == path.stem  # the model's name heads its report
    assert "parameters:" in out and "outputs:" in out
    assert "Traceback" not in err


@needs_reference
@pytest.mark.xfail(bool(REFERENCE_GAPS), strict=False, reason="; ".join(REFERENCE_GAPS.values()))
def test_check_whole_zoo(capsys):
    rc = main(["check", *map(str, ZOO_FILES)])
    out, err = capsys.readouterr()
    assert rc == 0, err
    names = [line.split()[0] for line in out.splitlines() if line and not line.startswith(" ")]
    assert names == [p.stem for p in ZOO_FILES]


def test_check_misspelled_key(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(BAD)
    rc = main(["check", str(bad)])
    out, err = capsys.readouterr()
    assert rc == 2
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0] == (f"error: {bad}:7:27: nodes.a.inptus: unknown key; expected one of: name, op, inputs, "
                        "outputs, algorithm, out, bias, tied (did you mean 'inputs'?)")
    assert "Traceback" not in err


def test_check_reports_every_bad_spec_and_carries_on(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(BAD)
    bad2 = tmp_path / "bad2.yaml"
    bad2.write_text(BAD.replace("op: linear, inptus", "op: lnear, inputs"))
    rc = main(["check", str(bad), str(bad2), str(tmp_path / "missing.yaml")])
    _, err = capsys.readouterr()
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 3, err
    assert f"{bad}:7:" in lines[0]
    assert f"{bad2}:7:" in lines[1] and "did you mean 'linear'?" in lines[1]
    assert "missing.yaml" in lines[2] and "no such file" in lines[2]
    assert "Traceback" not in err


@pytest.mark.parametrize("text, where", [
    ("name: [\n", "<yaml>"),
    ("", "<top>"),
    (BAD.replace("inptus", "inputs").replace("out: d}", "out: d, algorithm: fft}"), "algorithm"),
    (BAD.replace("inptus", "inputs").replace("d: 8", "d: 2**99"), "dims.d"),
])
def test_check_other_user_errors_are_one_line(tmp_path, capsys, text, where):
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    assert main(["check", str(bad)]) == 2
    _, err = capsys.readouterr()
    assert len(err.strip().splitlines()) == 1 and where in err and str(bad) in err
    assert "Traceback" not in err


def test_check_without_arguments_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as e:
        main(["check"])
    assert e.value.code == 2
    assert "Traceback" not in capsys.readouterr().err


def test_console_script_bad_spec(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(BAD)
    script = Path(sys.executable).parent / "ssmc"
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "ssmc.cli"]
    r = subprocess.run([*cmd, "check", str(bad)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    assert f"{bad}:7:27" in r.stderr and "did you mean 'inputs'?" in r.stderr
    assert r.stdout == ""
