"""`ssmc tune` end to end on the CPU (real TVM kernels, timed here) and its user errors."""

import json
import subprocess

import optuna
import pytest
import torch

import ssmc
from ssmc.cli import main
from ssmc.paths import zoo_dir
from ssmc.semantics.inputs import random_inputs
from ssmc.semantics.model import build_reference

from .conftest import ROOT, ssmc_cmd, ssmc_env

MAMBA = zoo_dir() / "mamba.yaml"


def test_tune_cpu_end_to_end_writes_a_record_the_next_compile_uses(tmp_path, records_dir):
    db = tmp_path / "studies.sqlite3"
    proc = subprocess.run(
        ssmc_cmd("tune", MAMBA, "--target", "cpu", "--trials", 3, "--seqlen", 32, "--batch", 1,
                 "--repeats", 3, "--storage", f"sqlite:///{db}", "--export", tmp_path / "ship",
                 "--no-progress"),
        cwd=ROOT, env=ssmc_env(records_dir), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "default" in out and "tuned" in out and "gain:" in out  # side by side, one run
    # every kernel family the compiled model runs on the CPU: the scan and the glue kernels
    assert sorted(p.name.split("-")[0] for p in (records_dir / "cpu").glob("*.json")) == [
        "conv1d", "rmsnorm", "selective_ssm.mamba1"]
    (path,) = (records_dir / "cpu").glob("selective_ssm*.json")
    rec = json.loads(path.read_text())
    assert rec["source"] == "measured" and rec["algorithm"] == "sequential"
    assert rec["bucket"] == {"batch": 1, "seqlen": 32, "channels": 256, "d_state": 16}
    assert rec["trials"]["complete"] + rec["trials"]["pruned"] >= 3
    assert (tmp_path / "ship" / "cpu" / path.name).read_text() == path.read_text()  # --export

    study = optuna.load_study(study_name=rec["study"], storage=f"sqlite:///{db}")
    assert len([t for t in study.trials if t.state.is_finished()]) >= 3
    assert study.trials[0].user_attrs["source"] == "measured"

    # the next compile of the same shape bucket runs the recorded config, with the same result
    model = ssmc.compile(MAMBA, "cpu", seqlen=20, batch=1).eval()  # 20 -> the 32 bucket
    ssm = [n for _, n, _ in model.graph.walk() if n.OP == "selective_ssm"]
    assert ssm and all(n.meta["config_source"] == "record" for n in ssm)
    assert all(n.meta["config"] == rec["config"] for n in ssm)
    (conv_path,) = (records_dir / "cpu").glob("conv1d-*.json")
    conv = [n for _, n, _ in model.graph.walk() if n.OP == "conv1d"]
    assert conv and all(n.meta["config_source"] == "record" and
                        n.meta["config"] == json.loads(conv_path.read_text())["config"]
                        for n in conv)
    ref = build_reference(model.source_graph).eval()
    model.load_state_dict(ref.state_dict())
    inputs = random_inputs(model.source_graph, {"batch": 1, "seqlen": 20})
    with torch.no_grad():
        torch.testing.assert_close(model(**inputs), ref(**inputs), rtol=6e-4, atol=2e-3)


def test_tune_cpu_mamba2_ssd_kernel(tmp_path, records_dir, capsys):
    """The Mamba-2 SSD node is tuned on its TVM kernel; the record's config reaches the
    compiled model, which still matches the reference."""
    spec = zoo_dir() / "mamba2.yaml"
    rc = main(["tune", str(spec), "--target", "cpu", "--trials", "3", "--seqlen", "16",
               "--batch", "1", "--repeats", "3", "--storage", f"sqlite:///{tmp_path / 's.db'}",
               "--family", "selective_ssm/ssd", "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    assert "gain:" in capsys.readouterr().out
    (path,) = (records_dir / "cpu").glob("selective_ssm.ssd-*.json")
    rec = json.loads(path.read_text())
    assert rec["algorithm"] == "sequential" and rec["source"] == "measured"
    model = ssmc.compile(spec, "cpu", seqlen=16, batch=1).eval()
    (ssm,) = [n for _, n, _ in model.graph.walk() if n.OP == "selective_ssm"]
    assert ssm.meta["config_source"] == "record" and ssm.meta["config"] == rec["config"]
    assert model.kernels == {"layers.*.ssm": "tvm:selective_ssm/ssd/sequential"}
    ref = build_reference(model.source_graph).eval()
    model.load_state_dict(ref.state_dict())
    inputs = random_inputs(model.source_graph, {"batch": 1, "seqlen": 16})
    with torch.no_grad():
        torch.testing.assert_close(model(**inputs), ref(**inputs), rtol=6e-4, atol=2e-3)


def _one_line_error(capsys, argv) -> str:
    try:
        rc = main(argv)
    except SystemExit as e:  # argparse's own errors
        rc = e.code
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2, err
    return err[-1]


@pytest.mark.parametrize("extra, message", [
    (["--target", "sm_9"], "unknown target 'sm_9'"),
    (["--trials", "0"], "positive integer"),
    (["--timeout", "-1"], "positive number"),
    (["--storage", "mongodb://x/y"], "not a storage URL"),
    (["--storage", "postgresql://ssmc@127.0.0.1:1/nowhere"], "cannot open postgresql://"),
    (["--workers", "2", "--storage", "sqlite:////tmp/x.db"], "SQLite cannot serve"),
])
def test_bad_input_exits_2_with_one_line(capsys, extra, message):
    argv = ["tune", str(MAMBA), "--target", "cpu", *extra]
    assert message in _one_line_error(capsys, argv)


def test_an_existing_study_needs_resume(capsys, tmp_path):
    url = f"sqlite:///{tmp_path / 's.db'}"
    storage = optuna.storages.RDBStorage(url)
    name = "mine/selective_ssm.mamba1-b2-l1024-c256-n16-float32"
    optuna.create_study(storage=storage, study_name=name).optimize(lambda t: 1.0, n_trials=1)
    line = _one_line_error(capsys, ["tune", str(MAMBA), "--target", "sm_90", "--storage", url,
                                    "--study", "mine"])
    assert "already has 1 trials" in line and "--resume" in line


def test_nothing_to_tune_is_a_user_error(capsys):
    # the dense selective SSM's TVM kernel has no space (and lcde has no glue kernels)
    line = _one_line_error(capsys, ["tune", str(zoo_dir() / "lcde.yaml"), "--target", "cpu",
                                    "--storage", "sqlite:///:memory:"])
    assert "nothing to tune" in line
