"""The command line, called in-process (`ssmc.cli.main`): each subcommand on small zoo specs,
and every user error is exit code 2 with one error line and never a traceback."""

from __future__ import annotations

import pytest

from ssmc.cli import main
from ssmc.paths import zoo_dir

ZOO = zoo_dir()


def run(argv, capsys):
    """(exit code, stdout, stderr); argparse's own errors raise SystemExit, counted the same."""
    try:
        rc = main([str(a) for a in argv])
    except SystemExit as e:
        rc = e.code
    out, err = capsys.readouterr()
    return rc, out, err


def error_lines(err: str) -> list:
    return [line for line in err.splitlines() if "error" in line.lower()]


@pytest.mark.parametrize("name", ["mamba", "s4d"])
def test_check(name, capsys):
    rc, out, err = run(["check", ZOO / f"{name}.yaml"], capsys)
    assert rc == 0, err
    assert out.split()[0] == name
    assert "kinds:" in out and "parameters:" in out
    assert err == ""


def test_check_several_specs(capsys):
    rc, out, err = run(["check", ZOO / "mamba.yaml", ZOO / "mamba2.yaml"], capsys)
    assert rc == 0, err
    assert "mamba " in out and "mamba2 " in out
    assert "selective_ssm/ssd" in out and "selective_ssm/mamba1" in out


@pytest.mark.parametrize("name", ["mamba", "s4d", "convssm"])
def test_run(name, capsys):
    rc, out, err = run(["run", ZOO / f"{name}.yaml", "--seqlen", "8"], capsys)
    assert rc == 0, err
    assert out.startswith(f"{name}: reference (eager PyTorch) forward")
    assert "seqlen=8" in out
    outs = [line for line in out.splitlines() if line.strip().startswith("out ")]
    assert outs and all("mean" in line and "std" in line and "finite" in line for line in outs)
    assert "NOT FINITE" not in out
    assert "time:" in out


@pytest.mark.parametrize("path", sorted(ZOO.glob("*.yaml")), ids=lambda p: p.stem)
def test_run_every_zoo_spec_forward_and_backward(path, capsys):
    """Every zoo model runs through the reference and its gradients reach every trainable
    parameter (chimera's run-time dim `variates` is given; other specs ignore it)."""
    rc, out, err = run(["run", path, "--seqlen", "5", "--dim", "variates=2", "--backward"], capsys)
    assert rc == 0, err
    assert "NOT FINITE" not in out
    (line,) = [x for x in out.splitlines() if "backward:" in x]
    reached, total = line.split("gradients reached ")[1].split()[0].split("/")
    assert reached == total and int(total) > 0, line


def test_run_with_a_runtime_dim(capsys):
    rc, out, err = run(["run", ZOO / "chimera.yaml", "--seqlen", "8", "--dim", "variates=3"], capsys)
    assert rc == 0, err
    assert "variates=3" in out


def test_explain_mamba_on_sm90(capsys):
    rc, out, err = run(["explain", ZOO / "mamba.yaml", "--target", "sm_90"], capsys)
    assert rc == 0, err
    assert out.startswith("# mamba for sm_90 (triton-cuda)")
    assert "== parsed ==" in out
    assert "== after schedule ==" in out
    assert "== decisions ==" in out
    # the cost table: a header and one row per candidate algorithm
    assert "cost model (fastest first):" in out and "time us" in out
    lines = out.splitlines()
    head = next(i for i, line in enumerate(lines) if "time us" in line)
    rows = [lines[head + k].split()[0] for k in (1, 2, 3)]
    assert sorted(rows) == ["associative", "chunked", "sequential"]
    decisions = out.split("== decisions ==")[1]
    assert "layers.*.ssm" in decisions and rows[0] in decisions


def test_explain_choice_changes_with_seqlen(capsys):
    """Issue 4's check: on sm_90, L=256 and L=16384 choose differently and say why (the reason
    and the cost table behind it)."""
    chosen = {}
    for L in (256, 16384):
        rc, out, err = run(["explain", ZOO / "mamba.yaml", "--target", "sm_90", "--seqlen", L],
                           capsys)
        assert rc == 0, err
        assert f"seqlen={L}" in out.splitlines()[0]
        why = [x.strip() for x in out.splitlines() if x.strip().startswith("why: cost model")]
        assert why, out
        chosen[L] = out.split("== decisions ==")[1].split()[1]
        assert "cost model (fastest first):" in out
    assert chosen[256] != chosen[16384], chosen


@pytest.mark.parametrize("L", [64, 16384])
def test_explain_s4d_on_sm90_names_the_algorithms_without_a_kernel(L, capsys):
    """The choice is one Triton has a kernel for; the cost table still shows the excluded
    (cheaper) forms and explain says why they were not taken."""
    rc, out, err = run(["explain", ZOO / "s4d_complex.yaml", "--target", "sm_90", "--seqlen", L],
                       capsys)
    assert rc == 0, err
    decision = out.split("== decisions ==")[1].split()
    assert decision[1] in ("sequential", "fft"), decision
    assert "cheaper but excluded" in out.split("== decisions ==")[1]
    (excluded,) = [x for x in out.splitlines() if x.strip().startswith("excluded:")]
    assert "'chunked': 'no triton kernel" in excluded
    assert "'associative': 'no triton kernel" in excluded
    table = out.split("cost model (fastest first):")[1]
    assert "chunked" in table and "associative" in table


def test_explain_all_passes(capsys):
    rc, out, err = run(["explain", ZOO / "mamba2.yaml", "--target", "cpu", "--seqlen", "64",
                        "--all-passes"], capsys)
    assert rc == 0, err
    for name in ("canonicalize", "legalize", "select_algorithm", "fuse", "schedule"):
        assert f"== after {name} ==" in out
    # the gate goes into the SSD node at fuse
    before, after = out.split("== after fuse ==")
    assert "gated = gate(" in before and "gated = gate(" not in after


def test_targets(capsys):
    rc, out, err = run(["targets"], capsys)
    assert rc == 0, err
    names = [line.split()[0] for line in out.splitlines()[1:]]
    assert "sm_90" in names and "cpu" in names
    assert "<- this host" in out


def test_demo(capsys):
    rc, out, err = run(["demo", ZOO / "mamba.yaml", "--seqlen", "32", "--repeats", "1",
                        "--target", "cpu"], capsys)
    assert rc == 0, out + err
    assert "compiled for cpu" in out
    assert "OK" in out and "MISMATCH" not in out
    assert "faster" in out


# ---- user errors: exit 2, one error line, no traceback ------------------------------------------

BAD = {
    "unknown_target": (["explain", ZOO / "mamba.yaml", "--target", "sm_9"], "did you mean 'sm_90'"),
    "unknown_target_demo": (["demo", ZOO / "mamba.yaml", "--target", "sm_09"], "did you mean"),
    "seqlen_0": (["run", ZOO / "mamba.yaml", "--seqlen", "0"], "--seqlen"),
    "batch_not_int": (["run", ZOO / "mamba.yaml", "--batch", "two"], "--batch"),
    "dim_without_eq": (["run", ZOO / "mamba.yaml", "--dim", "variates"], "NAME=VALUE"),
    "dim_not_int": (["run", ZOO / "chimera.yaml", "--dim", "variates=x"], "integer"),
    "dim_zero": (["explain", ZOO / "chimera.yaml", "--dim", "variates=0"], ">= 1"),
    "missing_spec_run": (["run", "no/such/spec.yaml"], "no such file"),
    "missing_spec_check": (["check", "no_such_spec.yaml"], "no such file"),
    "missing_spec_explain": (["explain", "no_such_spec.yaml", "--target", "cpu"], "no such file"),
    "missing_spec_demo": (["demo", "no_such_spec.yaml", "--target", "cpu"], "no such file"),
    "missing_spec_no_suffix": (["run", "no_such_spec"], "no such file"),
    "unknown_subcommand": (["frobnicate"], "invalid choice"),
    "no_subcommand": ([], "required"),
    "missing_runtime_dim_run": (["run", ZOO / "chimera.yaml", "--seqlen", "8"], "variates"),
    "missing_runtime_dim_explain": (["explain", ZOO / "chimera.yaml", "--target", "cpu"], "variates"),
}


@pytest.mark.parametrize("argv,needle", BAD.values(), ids=BAD.keys())
def test_user_error(argv, needle, capsys):
    rc, out, err = run(argv, capsys)
    assert rc == 2, (out, err)
    assert "Traceback" not in err and "internal error" not in err
    lines = error_lines(err)
    assert len(lines) == 1, err
    assert needle in lines[0], err


def test_check_reports_each_bad_spec_and_goes_on(capsys):
    rc, out, err = run(["check", "no_such_spec.yaml", ZOO / "s4d.yaml"], capsys)
    assert rc == 2
    assert out.split()[0] == "s4d"  # the good one was still checked
    assert len(error_lines(err)) == 1 and "Traceback" not in err


def test_run_compiled_for_this_host(capsys):
    rc, out, err = run(["run", ZOO / "mamba.yaml", "--seqlen", "8", "--target", "cpu"], capsys)
    assert rc == 0, err
    assert "mamba: compiled for cpu forward" in out
    assert "tvm:selective_ssm/mamba1" in out and "first call" in out and "finite" in out


def test_run_unknown_target_exits_2(capsys):
    rc, out, err = run(["run", ZOO / "mamba.yaml", "--seqlen", "8", "--target", "cpux"], capsys)
    assert rc == 2 and "did you mean 'cpu'" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_spec_may_name_a_zoo_model(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # not the checkout: the zoo is found through the package
    rc, out, err = run(["check", "mamba", "ir/s4d.yaml"], capsys)
    assert rc == 0, err
    assert out.startswith("mamba ") and "\ns4d " in out


def test_internal_error_exits_1(capsys, monkeypatch):
    """A bug (any exception that is not a SsmcError) is exit 1 and says it is ssmc's fault."""
    import ssmc.targets

    def broken(*_a, **_k):
        raise RuntimeError("simulated bug")

    monkeypatch.setattr(ssmc.targets, "list_targets", broken)
    rc, out, err = run(["targets"], capsys)
    assert rc == 1
    assert "internal error: RuntimeError: simulated bug" in err
