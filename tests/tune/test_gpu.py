"""On a machine with a GPU (make gpu-test): `ssmc tune --target auto` times the Triton kernels
with CUDA events, after pruning by the AOT metadata of the real device's arch."""

import json
import subprocess

import pytest
import torch

from ssmc.paths import zoo_dir

from .conftest import ROOT, ssmc_cmd, ssmc_env

pytestmark = pytest.mark.gpu


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_tune_on_this_gpu_is_measured(tmp_path, records_dir):
    from ssmc.targets import detect_host

    host = detect_host()
    proc = subprocess.run(
        ssmc_cmd("tune", zoo_dir() / "mamba.yaml", "--target", "auto", "--trials", 4,
                 "--storage", f"sqlite:///{tmp_path / 's.db'}", "--no-progress"),
        cwd=ROOT, env=ssmc_env(records_dir), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (path,) = (records_dir / host.name).glob("*.json")
    rec = json.loads(path.read_text())
    assert rec["source"] == "measured" and rec["target"] == host.name
    assert "measured side by side" in proc.stdout
