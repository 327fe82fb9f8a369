"""The Triton S4D kernels (diagonal_ssm: the recurrence, the Vandermonde kernel + torch.fft)
in the tuner: their space, their calls and oracle (interpreter, tiny shapes), and a model-mode
tune for sm_90 whose record the next compile picks up."""

import json
import subprocess

import pytest

from ssmc.cli import main
from ssmc.codegen.triton.families import get_family
from ssmc.ir.spec import load_spec
from ssmc.paths import zoo_dir
from ssmc.targets import load_target
from ssmc.tune.space import node_space
from ssmc.tune.study import Objective
from ssmc.tune.workload import kernel_inputs, kernel_knobs, workloads

from .conftest import ROOT, ssmc_cmd, ssmc_env


def _workload(spec: str, seqlen: int = 8):
    (w,) = workloads(load_spec(zoo_dir() / spec), load_target("sm_90"),
                     {"batch": 1, "seqlen": seqlen})
    return w


def test_the_triton_space_of_diagonal_ssm_has_both_algorithms():
    space = node_space("diagonal_ssm", ["sequential", "fft"], "triton")
    assert space.algorithms == ("sequential", "fft")
    assert space.kernels["sequential"].family == "s4d.recurrent"
    assert set(space.kernels["fft"].names) == {"block_d", "block_l", "num_warps"}
    tvm = node_space("diagonal_ssm", ["sequential", "fft"], "tvm")  # test_executor_families
    assert tvm.algorithms == ("sequential", "fft") and not tvm.kernels["fft"].knobs


# fft's config is not its default one: the knobs reach the kernel
@pytest.mark.parametrize("spec", ["s4d.yaml", "s4d_complex.yaml"])
@pytest.mark.parametrize("algorithm, config", [
    ("sequential", {"block_d": 4, "num_warps": 1}),
    ("fft", {"block_d": 8, "block_l": 32, "num_warps": 2})])
def test_kernel_call_matches_the_oracle_under_the_interpreter(spec, algorithm, config):
    w = _workload(spec, seqlen=40)  # L not a multiple of block_l
    objective = Objective(w, node_space(w.family, w.candidates, "triton"), load_target("sm_90"),
                          "measured")
    objective.check(objective.call(algorithm, config)())  # raises WrongResult on a mismatch
    assert objective.inputs()["u"].shape == (1, 64, 40)  # channels-first, as the executor


@pytest.mark.parametrize("algorithm", ["sequential", "fft"])
def test_meta_inputs_make_the_family_plan_the_aot_build_compiles(algorithm):
    w = _workload("s4d_complex.yaml", seqlen=1000)
    knobs = kernel_knobs(w, "triton", algorithm, w.default_config)
    fam = get_family(node_space(w.family, w.candidates, "triton").kernels[algorithm].family)
    plan = fam.plan(kernel_inputs(w, "triton", device="meta"), fam.config.from_dict(knobs))
    (launch,) = plan.launches
    if algorithm == "fft":  # the Vandermonde kernel tiles (L, d) of the node's shape
        assert launch.grid == (-(-1000 // knobs["block_l"]), 64 // knobs["block_d"])
    else:  # 32 stored modes: conjugate pairs of d_state 64
        assert launch.constexprs["BLOCK_N"] == 32 and launch.constexprs["STATE_COMPLEX"]


def test_model_mode_tune_for_sm_90_writes_a_record_compile_picks_up(tmp_path, records_dir,
                                                                     capsys):
    spec = zoo_dir() / "s4d.yaml"
    proc = subprocess.run(
        ssmc_cmd("tune", spec, "--target", "sm_90", "--trials", 3, "--seqlen", 256,
                 "--storage", f"sqlite:///{tmp_path / 's.db'}", "--no-progress"),
        cwd=ROOT, env=ssmc_env(records_dir), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "cost model" in proc.stdout
    (path,) = (records_dir / "sm_90").glob("diagonal_ssm-*.json")
    rec = json.loads(path.read_text())
    assert rec["source"] == "model" and rec["algorithm"] in ("sequential", "fft")
    assert rec["bucket"] == {"batch": 2, "seqlen": 256, "channels": 64, "d_state": 16}
    assert rec["trials"]["complete"] + rec["trials"]["pruned"] >= 3

    assert main(["explain", str(spec), "--target", "sm_90", "--batch", "2", "--seqlen", "256"]) == 0
    out = capsys.readouterr().out
    assert "config_source: record" in out and "tuned record (model)" in out
