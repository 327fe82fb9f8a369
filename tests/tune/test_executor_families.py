"""The 2-D SSM (chimera) and the PLRNN (convssm) TVM kernels are tuned like the selective scan:
their spaces, workloads whose trials run the node's executor on its reference module, every
sampled config matching the reference, a tune run that writes a record naming the kernel's
knobs, and a compiled model that runs the record's config (and the kernel's host default
without one)."""

import itertools
import json

import pytest
import torch

pytest.importorskip("tvm")

import ssmc  # noqa: E402
from ssmc.cli import main  # noqa: E402
from ssmc.codegen.tvm.plrnn import default_config as plrnn_default  # noqa: E402
from ssmc.codegen.tvm.plrnn_tir import PlrnnConfig  # noqa: E402
from ssmc.codegen.tvm.ssm2d import default_config as ssm2d_default  # noqa: E402
from ssmc.codegen.tvm.ssm2d_tir import Ssm2dConfig  # noqa: E402
from ssmc.ir.spec import load_spec  # noqa: E402
from ssmc.paths import zoo_dir  # noqa: E402
from ssmc.semantics.model import build_reference  # noqa: E402
from ssmc.targets import load_target  # noqa: E402
from ssmc.tune.records import Records, make_record  # noqa: E402
from ssmc.tune.space import load_all_spaces, node_space  # noqa: E402
from ssmc.tune.workload import kernel_call, kernel_inputs, kernel_knobs, reference_output, \
    workloads  # noqa: E402

CHIMERA, CONVSSM = zoo_dir() / "chimera.yaml", zoo_dir() / "convssm.yaml"
CASES = {  # family -> (spec, run-time dims, space file, config class)
    "ssm2d": (CHIMERA, {"variates": 3}, "tvm_ssm2d.yaml", Ssm2dConfig),
    "recurrence": (CONVSSM, {}, "tvm_plrnn.yaml", PlrnnConfig),
}
FP32 = dict(rtol=6e-4, atol=2e-3)


def _workload(family, seqlen=16, batch=2):
    spec, dims, _, _ = CASES[family]
    ws = workloads(load_spec(spec), load_target("cpu"), {"batch": batch, "seqlen": seqlen, **dims})
    (w,) = [w for w in ws if w.family == family]
    return w


@pytest.mark.parametrize("family", sorted(CASES))
def test_spaces_load_and_name_fields_of_their_config(family):
    _, _, name, cls = CASES[family]
    space = load_all_spaces()[name]
    assert set(space.names) <= set(cls.__dataclass_fields__)
    for knob in space.knobs:  # every choice makes a valid config
        for value in knob.choices:
            cls(**{knob.name: value})
    w = _workload(family)
    ns = node_space(family, w.algorithms("tvm"), "tvm")
    assert ns is not None and {k.path.name for k in ns.kernels.values()} == {name}


def test_the_default_trial_is_what_the_compiled_model_runs():
    """The schedule pass leaves these kernels their host defaults ({}), so the tuner's default
    trial spells out exactly that (the 2-D SSM's loop order is its algorithm's)."""
    w = _workload("ssm2d")
    assert w.default_config == {}
    assert set(w.algorithms("tvm")) == {"wavefront", "sequential"}
    assert kernel_knobs(w, "tvm", "wavefront", {}) == ssm2d_default().as_dict()
    assert kernel_knobs(w, "tvm", "sequential", {"threads": 1}) == \
        ssm2d_default().replace(order="rows", threads=1).as_dict()
    r = _workload("recurrence")
    assert r.default_config == {} and r.node.meta.get("epilogue") is not None  # the HRF conv
    assert kernel_knobs(r, "tvm", "sequential", {}) == plrnn_default().as_dict()


def _sampled_configs(name):
    """Each value of each knob at least once (every config is a TVM build)."""
    space = load_all_spaces()[name]
    width = max(len(k.choices) for k in space.knobs)
    return [{k.name: k.choices[(i + j) % len(k.choices)] for j, k in enumerate(space.knobs)}
            for i in range(width)]


@pytest.mark.parametrize("family", sorted(CASES))
def test_sampled_configs_match_the_reference(family):
    w = _workload(family, seqlen=23)
    inputs = kernel_inputs(w, "tvm")
    want = reference_output(w, inputs, "tvm")
    for alg, cfg in itertools.product(w.algorithms("tvm"), _sampled_configs(CASES[family][2])):
        got = kernel_call(w, alg, cfg, "tvm", inputs)()
        torch.testing.assert_close(got, want, **FP32, msg=lambda m: f"{alg} {cfg}: {m}")


def test_a_trial_runs_the_config_it_names(monkeypatch):
    """The executor receives the trial's knobs spelled out (a partial dict would leave the
    kernel's defaults)."""
    from ssmc.runtime import executors

    seen = []
    real = executors.for_node

    def for_node(*args):
        executor, fn = real(*args)

        def spy(*a, **k):
            seen.append(k.get("config"))
            return fn(*a, **k)

        return executor, spy

    monkeypatch.setattr(executors, "for_node", for_node)
    w = _workload("ssm2d")
    kernel_call(w, "sequential", {"channel_block": 4, "vector_width": 4, "threads": 1}, "tvm",
                kernel_inputs(w, "tvm"))()
    assert seen == [ssm2d_default().replace(channel_block=4, vector_width=4, threads=1,
                                            order="rows")]


@pytest.mark.parametrize("family", sorted(CASES))
def test_tune_writes_a_record_that_names_the_kernel_knobs(family, tmp_path, records_dir, capsys):
    spec, dims, _, cls = CASES[family]
    db = f"sqlite:///{tmp_path / 's.db'}"
    argv = ["tune", str(spec), "--target", "cpu", "--trials", "3", "--seqlen", "16",
            "--batch", "1", "--repeats", "2", "--rounds", "3", "--storage", db,
            "--family", family, "--no-progress"]
    for k, v in dims.items():
        argv += ["--dim", f"{k}={v}"]
    assert main(argv) == 0
    assert "gain:" in capsys.readouterr().out
    (path,) = (records_dir / "cpu").glob(f"{family}-*.json")
    rec = json.loads(path.read_text())
    assert rec["family"] == family and rec["source"] == "measured"
    assert set(rec["config"]) == set(cls.__dataclass_fields__)
    cfg = cls(**rec["config"])
    if family == "ssm2d":
        assert cfg.order == ("rows" if rec["algorithm"] == "sequential" else "wavefront")


RECORDED = {"ssm2d": ("sequential", ssm2d_default().replace(channel_block=4, vector_width=4,
                                                            order="rows", threads=1)),
            "recurrence": ("sequential", plrnn_default().replace(traj_block=2, vector_width=4,
                                                                 accumulators=2, threads=1))}


@pytest.mark.parametrize("family", sorted(CASES))
def test_a_compiled_model_runs_the_recorded_config(family, records_dir):
    spec, dims, _, _ = CASES[family]
    w = _workload(family, seqlen=16, batch=1)
    alg, cfg = RECORDED[family]
    Records(load_target("cpu")).write(make_record(w.key, load_target("cpu"), algorithm=alg,
                                                  config=cfg.as_dict(), source="measured"))
    model = ssmc.compile(spec, "cpu", seqlen=13, batch=1, dims=dims).eval()  # -> the 16 bucket
    (node,) = [n for _, n, _ in model.graph.walk()
               if n.meta.get("kernel", "").startswith(family + "/")]
    assert node.meta["config_source"] == "record" and node.meta["algorithm"] == alg
    assert node.meta["kernel_config"] == cfg
    ref = build_reference(model.source_graph).eval()
    model.load_state_dict(ref.state_dict())
    x = torch.randn(1, 13, 3, 1) if family == "ssm2d" else torch.randn(1, 13, 3)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(x), **FP32)


@pytest.mark.parametrize("family", sorted(CASES))
def test_without_a_record_the_kernel_runs_its_host_default(family):
    spec, dims, _, _ = CASES[family]
    model = ssmc.compile(spec, "cpu", seqlen=16, batch=1, dims=dims).eval()
    (node,) = [n for _, n, _ in model.graph.walk()
               if n.meta.get("kernel", "").startswith(family + "/")]
    assert node.meta["config"] == {} and node.meta["config_source"] == "default"
    want = None if family == "recurrence" else ssm2d_default().replace(
        order="rows" if node.meta["algorithm"] == "sequential" else "wavefront")
    assert node.meta["kernel_config"] == want


# ---- Triton: the same families on a GPU target (sm_90; here under the interpreter and in
# model mode: the cost model ranks the AOT builds)

TRITON = {  # family -> (spec, dims, space file, a config other than the default)
    "ssm2d": (CHIMERA, {"variates": 3}, "triton_ssm2d_wavefront.yaml",
              {"block_c": 8, "block_d": 2, "num_warps": 2}),
    "recurrence": (CONVSSM, {}, "triton_plrnn_sequential.yaml", {"block_b": 1, "num_warps": 1}),
    "selective_ssm/dense": (zoo_dir() / "lcde.yaml", {}, "triton_dense_sequential.yaml",
                            {"block_nb": 2, "num_warps": 1}),
}


def _gpu_workload(family, seqlen=8, batch=1):
    spec, dims, _, _ = TRITON[family]
    ws = workloads(load_spec(spec), load_target("sm_90"), {"batch": batch, "seqlen": seqlen,
                                                           **dims})
    (w,) = [w for w in ws if w.family == family]
    return w


@pytest.mark.parametrize("family", sorted(TRITON))
def test_triton_spaces_are_the_node_families(family):
    w = _gpu_workload(family)
    ns = node_space(family, w.algorithms("triton"), "triton")
    assert ns is not None and {k.path.name for k in ns.kernels.values()} == {TRITON[family][2]}


@pytest.mark.parametrize("family", sorted(TRITON))
def test_triton_trials_match_the_oracle_under_the_interpreter(family, monkeypatch):
    from ssmc.codegen.triton.common import interpreting
    from ssmc.tune.study import Objective

    if not interpreting():
        pytest.skip("the default tier runs Triton through its interpreter")
    w = _gpu_workload(family, seqlen=11)
    objective = Objective(w, node_space(w.family, w.algorithms("triton"), "triton"),
                          load_target("sm_90"), "measured")
    alg = w.algorithms("triton")[0]
    for cfg in ({}, TRITON[family][3]):
        objective.check(objective.call(alg, cfg)())  # raises WrongResult on a mismatch


@pytest.mark.parametrize("family", sorted(TRITON))
def test_meta_launch_examples_make_the_family_plan(family):
    from ssmc.codegen.triton.families import get_family
    from ssmc.tune.workload import launch_example

    w = _gpu_workload(family, seqlen=300, batch=2)
    alg = w.algorithms("triton")[0]
    knobs = kernel_knobs(w, "triton", alg, TRITON[family][3])
    fam = get_family(node_space(family, [alg], "triton").kernels[alg].family)
    example = launch_example(w)
    assert all(t.device.type == "meta" for t in example.values() if isinstance(t, torch.Tensor))
    plan = fam.plan(example, fam.config.from_dict(knobs))
    assert plan.launches and all(launch.num_warps for launch in plan.launches)


def test_model_mode_tune_of_the_2d_ssm_for_sm_90_writes_a_record(tmp_path, records_dir):
    import subprocess

    from .conftest import ROOT, ssmc_cmd, ssmc_env

    proc = subprocess.run(
        ssmc_cmd("tune", CHIMERA, "--target", "sm_90", "--trials", 3, "--seqlen", 64,
                 "--dim", "variates=8", "--storage", f"sqlite:///{tmp_path / 's.db'}",
                 "--no-progress"),
        cwd=ROOT, env=ssmc_env(records_dir), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "cost model" in proc.stdout
    (path,) = (records_dir / "sm_90").glob("ssm2d-*.json")
    rec = json.loads(path.read_text())
    assert rec["source"] == "model" and rec["algorithm"] == "wavefront"
    assert {"block_c", "block_d", "num_warps"} <= set(rec["config"])
    model = ssmc.compile(CHIMERA, "sm_90", seqlen=64, dims={"variates": 8})
    (node,) = [n for _, n, _ in model.graph.walk() if n.OP == "ssm2d"]
    assert node.meta["config_source"] == "record"


def test_the_2d_ssm_default_on_a_gpu_is_the_kernels_own():
    """The schedule pass no longer hands the wavefront kernel the generic BLOCK_D 32 (which
    spilled on sm_90): the compiled model runs the family's own default."""
    from ssmc.codegen.triton.ssm2d.wavefront import Ssm2dWavefrontConfig

    model = ssmc.compile(CHIMERA, "sm_90", seqlen=64, dims={"variates": 8})
    (node,) = [n for _, n, _ in model.graph.walk() if n.OP == "ssm2d"]
    assert node.meta["kernel_config"] == Ssm2dWavefrontConfig()


@pytest.mark.parametrize("spec, target, dims, family, alg, config", [
    (CHIMERA, "cpu", {"variates": 3}, "ssm2d", "wavefront",
     {"order": "diagonal", "channel_block": 8, "vector_width": 8, "threads": 0}),
    (CONVSSM, "cpu", {}, "recurrence", "sequential", {"traj_block": 0}),
    (zoo_dir() / "mamba.yaml", "sm_90", {}, "selective_ssm/mamba1", "sequential",
     {"BLOCK_D": 3, "num_warps": 4}),
], ids=["ssm2d-order", "plrnn-zero-block", "mamba1-triton-odd-block"])
def test_a_record_whose_config_the_kernel_cannot_take_is_ignored_with_a_warning(
        spec, target, dims, family, alg, config, records_dir):
    """A hand-edited (or foreign) record must not break a compile: it is skipped with a
    warning naming its file and what is wrong, and the node keeps its defaults."""
    tgt = load_target(target)
    ws = workloads(load_spec(spec), tgt, {"batch": 1, "seqlen": 16, **dims})
    (w,) = [w for w in ws if w.family == family]
    path = Records(tgt).write(make_record(w.key, tgt, algorithm=alg, config=config,
                                          source="measured"))
    with pytest.warns(UserWarning, match=rf"ignoring the tuned record {path}: .*{family}/{alg}"):
        model = ssmc.compile(spec, target, seqlen=16, batch=1, dims=dims)
    (node,) = [n for _, n, _ in model.graph.walk() if n.meta.get("kernel") == f"{family}/{alg}"]
    assert node.meta["config_source"] == "default"


def test_the_cli_says_which_record_it_ignores_in_one_line(records_dir, capsys):
    tgt = load_target("cpu")
    (w,) = [w for w in workloads(load_spec(CHIMERA), tgt, {"batch": 1, "seqlen": 16,
                                                            "variates": 3})
            if w.family == "ssm2d"]
    path = Records(tgt).write(make_record(w.key, tgt, algorithm="wavefront",
                                          config={"order": "diagonal"}, source="measured"))
    assert main(["run", str(CHIMERA), "--target", "cpu", "--seqlen", "16", "--batch", "1",
                 "--dim", "variates=3"]) == 0
    err = capsys.readouterr().err
    assert f"warning: ignoring the tuned record {path}" in err
    assert "UserWarning" not in err and "schedule.py" not in err


# ---- the diagonal SSM (S4D / LRU) on the CPU: the recurrence's knobs, and the algorithm
# (recurrence vs Vandermonde + FFT) weighed by measurement

S4D_COMPLEX = zoo_dir() / "s4d_complex.yaml"


def _diag_workload(spec=S4D_COMPLEX, seqlen=37, batch=2):
    ws = workloads(load_spec(spec), load_target("cpu"), {"batch": batch, "seqlen": seqlen})
    (w,) = [w for w in ws if w.family == "diagonal_ssm"]
    return w


def test_the_diagonal_space_weighs_both_algorithms():
    from ssmc.codegen.tvm.diagonal_scan_tir import DiagonalScanConfig

    w = _diag_workload()
    ns = node_space("diagonal_ssm", w.algorithms("tvm"), "tvm")
    assert set(ns.algorithms) == {"sequential", "fft"}
    assert set(ns.kernels["sequential"].names) == {"vector_width", "mode_unroll"}
    assert ns.kernels["fft"].knobs == ()  # the algorithm only
    for knob in ns.kernels["sequential"].knobs:
        for value in knob.choices:
            DiagonalScanConfig(**{knob.name: value})
    assert w.default_config == {}
    assert kernel_knobs(w, "tvm", "sequential", {}) == DiagonalScanConfig().as_dict()
    assert kernel_knobs(w, "tvm", "fft", {}) == {}


@pytest.mark.parametrize("spec", [zoo_dir() / "s4d.yaml", S4D_COMPLEX, zoo_dir() / "lru_polar.yaml"])
def test_diagonal_configs_match_the_reference(spec):
    w = _diag_workload(spec)
    inputs = kernel_inputs(w, "tvm")
    want = reference_output(w, inputs, "tvm")
    space = load_all_spaces()["tvm_diagonal_scan.yaml"]
    cfgs = [("fft", {})] + [("sequential", dict(zip(space.names, v)))
                            for v in [(4, 4), (8, 16), (16, 8)]]
    for alg, cfg in cfgs:
        got = kernel_call(w, alg, cfg, "tvm", inputs)()
        torch.testing.assert_close(got, want, **FP32, msg=lambda m: f"{alg} {cfg}: {m}")


def test_a_diagonal_record_sets_the_algorithm_and_the_recurrences_knobs(records_dir,
                                                                        monkeypatch):
    from ssmc.codegen.tvm import diagonal_scan as kernel
    from ssmc.codegen.tvm.diagonal_scan_tir import DiagonalScanConfig

    w = _diag_workload(seqlen=16, batch=1)
    cfg = DiagonalScanConfig(vector_width=4, mode_unroll=4)
    tgt = load_target("cpu")
    Records(tgt).write(make_record(w.key, tgt, algorithm="sequential", config=cfg.as_dict(),
                                   source="measured"))
    model = ssmc.compile(S4D_COMPLEX, "cpu", seqlen=13, batch=1).eval()
    (node,) = [n for _, n, _ in model.graph.walk() if n.OP == "diagonal_ssm"]
    assert node.meta["algorithm"] == "sequential" and node.meta["config_source"] == "record"
    seen, real = [], kernel.diagonal_scan

    def spy(*a, **k):
        seen.append(k.get("config"))
        return real(*a, **k)

    monkeypatch.setattr(kernel, "diagonal_scan", spy)
    ref = build_reference(model.source_graph).eval()
    model.load_state_dict(ref.state_dict())
    x = torch.randn(1, 13, 1)  # d_input 1
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(x), **FP32)
    assert seen and all(c == cfg for c in seen)
