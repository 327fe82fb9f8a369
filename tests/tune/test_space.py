"""Search spaces: YAML -> Optuna suggestions, with the algorithm as a categorical and
conditional knobs."""

import optuna
import pytest

from ssmc.errors import SsmcError
from ssmc.tune.space import NodeSpace, load_all_spaces, load_kernel_space, node_space

optuna.logging.set_verbosity(optuna.logging.WARNING)

TVM_LIKE = """
family: demo.tvm
config: demo.Config
knobs:
  - {name: channel_block, type: int, choices: [8, 16]}
  - {name: layout, type: str, choices: [bld, bdl]}
  - {name: time_tile, type: int, choices: [8, 16], when: {layout: bdl}}
  - {name: scale, type: float, low: 0.5, high: 2.0, log: true}
"""


@pytest.fixture
def kernel_space(tmp_path):
    p = tmp_path / "demo.yaml"
    p.write_text(TVM_LIKE)
    return load_kernel_space(p)


def _suggestions(space: NodeSpace, n=40, seed=0):
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    out = []

    def objective(trial):
        alg, cfg = space.suggest(trial)
        out.append((alg, cfg, dict(trial.params)))
        return 0.0

    study.optimize(objective, n_trials=n)
    return out


def test_a_knob_with_when_exists_only_under_its_condition(kernel_space):
    space = NodeSpace("f", "tvm", {"sequential": kernel_space})
    seen = _suggestions(space)
    assert {cfg["layout"] for _, cfg, _ in seen} == {"bld", "bdl"}
    for alg, cfg, params in seen:
        assert alg == "sequential" and "algorithm" not in params  # one algorithm: no categorical
        assert ("time_tile" in cfg) == (cfg["layout"] == "bdl")
        assert 0.5 <= cfg["scale"] <= 2.0


def test_several_algorithms_make_a_categorical_and_prefixed_conditional_knobs(kernel_space, tmp_path):
    other = tmp_path / "other.yaml"
    other.write_text("family: demo.chunked\nknobs:\n  - {name: chunk, type: int, choices: [32, 64]}\n")
    space = NodeSpace("f", "triton", {"sequential": kernel_space, "chunked": load_kernel_space(other)})
    seen = _suggestions(space)
    assert {alg for alg, _, _ in seen} == {"sequential", "chunked"}
    for alg, cfg, params in seen:
        assert params["algorithm"] == alg
        # a knob is suggested only in trials of its algorithm, under the algorithm's prefix
        assert all(k == "algorithm" or k.startswith(alg + ".") for k in params)
        assert (set(cfg) == {"chunk"}) == (alg == "chunked")
        assert space.config_of(params) == (alg, cfg)
        assert space.params_of(alg, cfg) == params


def test_params_of_a_config_outside_the_space_is_none(kernel_space):
    space = NodeSpace("f", "tvm", {"sequential": kernel_space})
    assert space.params_of("sequential", {"channel_block": 12, "layout": "bld", "scale": 1}) is None
    assert space.params_of("chunked", {}) is None
    assert space.params_of("sequential", {"channel_block": 8, "layout": "bld", "scale": 1.0}) == {
        "channel_block": 8, "layout": "bld", "scale": 1.0}


def test_shipped_spaces_parse_and_node_spaces_follow_the_backend():
    spaces = load_all_spaces()
    assert "tvm_selective_scan.yaml" in spaces and "triton_ssd_chunked.yaml" in spaces
    tvm = node_space("selective_ssm/mamba1", ["sequential", "associative", "chunked"], "tvm")
    assert tvm.algorithms == ("sequential",)  # the only TVM kernel of the family
    knobs = tvm.kernels["sequential"]
    assert {"channel_block", "vector_width", "layout", "time_tile"} <= set(knobs.names)
    assert [k for k in knobs.knobs if k.name == "time_tile"][0].when == {"layout": "bdl"}
    gpu = node_space("selective_ssm/mamba1", ["sequential", "associative", "chunked"], "triton")
    assert gpu.algorithms == ("sequential", "associative", "chunked")
    diag = node_space("diagonal_ssm", ["sequential", "fft"], "tvm")  # the algorithm too
    assert diag.algorithms == ("sequential", "fft") and diag.kernels["fft"].knobs == ()
    ssd = node_space("selective_ssm/ssd", ["sequential", "chunked"], "tvm")
    assert ssd.algorithms == ("sequential",)
    assert "layout" not in ssd.kernels["sequential"].names  # channels-last only


@pytest.mark.parametrize("text, message", [
    ("knobs: 3", "knobs"),
    ("knobs:\n  - {name: a, type: complex, choices: [1]}", "type"),
    ("knobs:\n  - {name: a, choices: []}", "non-empty"),
    ("knobs:\n  - {name: a, low: 3, high: 1}", "low <= high"),
    ("knobs:\n  - {name: a, choices: [1], when: {b: 2}}\n  - {name: b, choices: [2]}", "listed before"),
    ("knobs:\n  - {name: a, choice: [1]}", "unknown key"),
])
def test_bad_space_files_are_one_line_errors(tmp_path, text, message):
    p = tmp_path / "bad.yaml"
    p.write_text(text)
    with pytest.raises(SsmcError, match=message) as e:
        load_kernel_space(p)
    assert "\n" not in str(e.value)
