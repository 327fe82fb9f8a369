"""The CPU glue kernels a compiled model runs besides its SSM nodes (the causal conv1d and the
rmsnorm) are tuned like them: their spaces, a tune run that writes a record, the compiled model
running the record's config (and ignoring a record of another bucket or stack), and the
correctness of every config of the spaces."""

import importlib
import json

import pytest
import torch

pytest.importorskip("tvm")

import ssmc  # noqa: E402
from ssmc.cli import main  # noqa: E402
from ssmc.codegen.tvm import decode  # noqa: E402
from ssmc.codegen.tvm.config import Config  # noqa: E402
from ssmc.codegen.tvm.rmsnorm_tir import NormConfig  # noqa: E402
from ssmc.ir.spec import load_spec  # noqa: E402
from ssmc.paths import zoo_dir  # noqa: E402
from ssmc.semantics.model import build_reference  # noqa: E402
from ssmc.targets import load_target  # noqa: E402
from ssmc.tune.records import RecordKey, Records, make_record  # noqa: E402
from ssmc.tune.space import SPACE_FILES, load_all_spaces, node_space  # noqa: E402
from ssmc.tune.workload import glue_inputs, glue_reference, kernel_call, kernel_knobs, workloads  # noqa: E402

MAMBA = zoo_dir() / "mamba.yaml"
GLUE_SPACES = {"conv1d": "tvm_causal_conv1d.yaml", "rmsnorm": "tvm_rmsnorm.yaml"}


def _config_class(path: str):
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


@pytest.mark.parametrize("family", sorted(GLUE_SPACES))
def test_glue_spaces_load_and_name_fields_of_their_config(family):
    space = load_all_spaces()[GLUE_SPACES[family]]
    cls = _config_class(space.config)
    fields = set(cls.__dataclass_fields__)
    assert set(space.names) <= fields, set(space.names) - fields
    for knob in space.knobs:  # every choice makes a valid config
        for value in knob.choices:
            cls(**{knob.name: value})
    ns = node_space(family, ["window" if family == "conv1d" else "rowwise"], "tvm")
    assert ns is not None and ns.kernels[ns.algorithms[0]].path.name == GLUE_SPACES[family]
    assert node_space(family, ns.algorithms, "triton") is None  # CPU glue kernels only
    assert SPACE_FILES[(family, ns.algorithms[0], "tvm")] == GLUE_SPACES[family]


def test_workloads_hold_the_glue_nodes_on_the_cpu_only():
    graph = load_spec(MAMBA)
    ws = {w.family: w for w in workloads(graph, load_target("cpu"), {"batch": 2, "seqlen": 1024})}
    assert set(ws) == {"selective_ssm/mamba1", "conv1d", "rmsnorm"}
    assert ws["conv1d"].nodes == ["layers.*.conv1d"] and ws["conv1d"].channels == 256
    assert sorted(ws["rmsnorm"].nodes) == ["layers.*.norm", "norm_f"]
    assert ws["rmsnorm"].key.filename() == "rmsnorm-b2-l1024-c128-n0-float32.json"
    # the default trial is the kernel's own default, spelled out
    assert kernel_knobs(ws["conv1d"], "tvm", "window", {}) == decode._config(False).as_dict()
    assert kernel_knobs(ws["rmsnorm"], "tvm", "rowwise", {}) == {
        "vector_width": decode._config(False).vector_width, "parallel": True}
    gpu = workloads(graph, load_target("sm_90"), {"batch": 2, "seqlen": 1024})
    assert [w.family for w in gpu] == ["selective_ssm/mamba1"]


def test_tune_the_conv_family_writes_a_record(tmp_path, records_dir, capsys):
    db = f"sqlite:///{tmp_path / 's.db'}"
    rc = main(["tune", str(MAMBA), "--target", "cpu", "--trials", "3", "--seqlen", "16",
               "--batch", "1", "--repeats", "2", "--rounds", "3", "--storage", db,
               "--family", "conv1d", "--no-progress"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "conv1d batch=1 seqlen=16 channels=256 width=4 silu" in out and "gain:" in out
    (path,) = (records_dir / "cpu").glob("*.json")  # only the family asked for
    assert path.name == "conv1d-b1-l16-c256-n0-float32.json"
    rec = json.loads(path.read_text())
    assert rec["family"] == "conv1d" and rec["algorithm"] == "window"
    assert rec["source"] == "measured" and rec["target"] == "cpu"
    assert rec["trials"]["complete"] + rec["trials"]["pruned"] >= 3
    assert set(rec["config"]) == set(Config.__dataclass_fields__)
    Config(**rec["config"])


def test_an_unknown_family_is_a_user_error(capsys):
    rc = main(["tune", str(MAMBA), "--target", "cpu", "--family", "conv2d",
               "--storage", "sqlite:///:memory:"])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert rc == 2 and "--family conv2d" in err and "conv1d" in err


def _spy(monkeypatch):
    seen = {"conv": [], "norm": []}
    conv, norm = decode.causal_conv1d, decode.rmsnorm

    def spy_conv(*a, **k):
        seen["conv"].append(k.get("config"))
        return conv(*a, **k)

    def spy_norm(*a, **k):
        seen["norm"].append(k.get("config"))
        return norm(*a, **k)

    monkeypatch.setattr(decode, "causal_conv1d", spy_conv)
    monkeypatch.setattr(decode, "rmsnorm", spy_norm)
    return seen


def _glue_record(family, channels, config, batch=1, seqlen=16):
    key = RecordKey.of(family, batch=batch, seqlen=seqlen, channels=channels, d_state=0)
    alg = "window" if family == "conv1d" else "rowwise"
    return make_record(key, load_target("cpu"), algorithm=alg, config=config, source="measured")


def _run_checked(model, batch=1, seqlen=16):
    ref = build_reference(model.source_graph).eval()
    model.load_state_dict(ref.state_dict())
    tokens = torch.randint(0, 256, (batch, seqlen))
    with torch.no_grad():
        torch.testing.assert_close(model(tokens), ref(tokens), rtol=6e-4, atol=2e-3)


CONV = Config(channel_block=8, vector_width=8, threads=1)
NORM = {"vector_width": 4, "parallel": False}


def test_a_compiled_model_runs_the_recorded_glue_configs(records_dir, monkeypatch):
    recs = Records(load_target("cpu"))
    recs.write(_glue_record("conv1d", 256, CONV.as_dict()))
    recs.write(_glue_record("rmsnorm", 128, NORM))
    model = ssmc.compile(MAMBA, "cpu", seqlen=13, batch=1).eval()  # 13 -> the 16 bucket
    glue = {q: n for q, n, _ in model.graph.walk() if n.OP in ("conv1d", "rmsnorm")}
    assert all(n.meta["config_source"] == "record" for n in glue.values())
    assert glue["layers.*.conv1d"].meta["config"] == CONV.as_dict()
    assert glue["norm_f"].meta["config"] == NORM
    seen = _spy(monkeypatch)
    _run_checked(model, seqlen=13)
    assert seen["conv"] == [CONV, CONV]  # two layers
    assert seen["norm"] == [NormConfig(**NORM)] * 3  # two block norms and the final one


def test_a_record_of_another_bucket_or_stack_is_ignored(records_dir, monkeypatch):
    recs = Records(load_target("cpu"))
    recs.write(_glue_record("conv1d", 256, CONV.as_dict(), seqlen=64))  # another length bucket
    recs.write(_glue_record("conv1d", 256, CONV.as_dict(), batch=2))  # another batch
    stale = _glue_record("rmsnorm", 128, NORM)
    stale["versions"] = {**stale["versions"], "tvm": "0.19.0"}  # measured with another TVM
    recs.write(stale)
    model = ssmc.compile(MAMBA, "cpu", seqlen=16, batch=1).eval()
    glue = [n for _, n, _ in model.graph.walk() if n.OP in ("conv1d", "rmsnorm")]
    assert glue and all(n.meta["config_source"] == "default" and n.meta["config"] == {}
                        for n in glue)
    seen = _spy(monkeypatch)
    _run_checked(model)
    assert seen["conv"] == [None, None] and seen["norm"] == [None] * 3  # the kernels' defaults


def _knob_grid(family):
    """Every value of every knob, in combinations of the first two knobs with the third cycling
    through its values (each config is a TVM build: the full product is too many for a test)."""
    space = load_all_spaces()[GLUE_SPACES[family]]
    import itertools

    first, second, *rest = space.knobs
    out = []
    for i, (a, b) in enumerate(itertools.product(first.choices, second.choices)):
        cfg = {first.name: a, second.name: b}
        for knob in rest:
            cfg[knob.name] = knob.choices[i % len(knob.choices)]
        out.append(cfg)
    return out


class _W:
    """A stand-in workload of the shape the correctness checks want."""

    def __init__(self, family, node, batch, seqlen, channels):
        self.family, self.node, self.glue = family, node, True
        self.batch, self.seqlen, self.channels = batch, seqlen, channels
        self.key = RecordKey.of(family, batch=batch, seqlen=seqlen, channels=channels, d_state=0)


def _node(op, **attrs):
    from ssmc.ir.ops.glue import Conv1d, RMSNorm

    cls = Conv1d if op == "conv1d" else RMSNorm
    return cls(name=op, inputs={"x": "x"}, outputs=["y"], **attrs)


@pytest.mark.parametrize("channels", [256, 40])  # 40: blocks of 16/32/64/128 leave a remainder
def test_every_conv_config_of_the_space_matches_the_reference(channels):
    w = _W("conv1d", _node("conv1d", kernel=4, activation="silu"), 2, 37, channels)
    inputs = glue_inputs(w)
    want = glue_reference(w, inputs)
    for cfg in _knob_grid("conv1d"):
        got = kernel_call(w, "window", cfg, "tvm", inputs)()
        torch.testing.assert_close(got, want, rtol=6e-4, atol=2e-3, msg=lambda m: f"{cfg}: {m}")


def test_every_rmsnorm_config_of_the_space_matches_the_reference():
    for groups, channels in ((1, 128), (2, 72)):  # 72: 36 per group, a tail after the vectors
        w = _W("rmsnorm", _node("rmsnorm", groups=groups), 2, 19, channels)
        inputs = glue_inputs(w)
        want = glue_reference(w, inputs)
        for cfg in _knob_grid("rmsnorm"):
            got = kernel_call(w, "rowwise", cfg, "tvm", inputs)()
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5,
                                       msg=lambda m: f"{cfg}: {m}")


def test_the_conv_step_still_updates_its_state_with_threads_one():
    """threads=1 keeps the one-token conv serial; the sequence conv with it runs one task."""
    from ssmc.semantics.glue import causal_conv1d as ref

    x = torch.randn(2, 9, 24)
    w, b = torch.randn(24, 1, 4), torch.randn(24)
    state = torch.zeros(2, 24, 4)
    outs = [decode.causal_conv1d_update(x[:, t], state, w, b, "silu") for t in range(9)]
    want = ref(x, w, b, "silu")
    torch.testing.assert_close(torch.stack(outs, 1), want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(state, x[:, -4:].transpose(1, 2))
    one = decode.causal_conv1d(x, w, b, "silu", config=Config(channel_block=8, vector_width=8,
                                                                 threads=1))
    torch.testing.assert_close(one, want, rtol=1e-5, atol=1e-5)


def test_the_final_comparison_remeasures_the_runners_up():
    """On a busy machine the best trial is often a lucky sample: the next-best distinct configs
    are timed side by side with it and the defaults (the fastest there makes the record)."""
    import optuna
    from optuna.distributions import CategoricalDistribution
    from optuna.trial import create_trial

    from ssmc.tune.gain import _runners_up

    study = optuna.create_study()
    dist = {"channel_block": CategoricalDistribution([8, 16, 32, 64])}
    for cb, value in ((32, 5.0), (8, 1.0), (16, 3.0), (8, 1.5), (64, 4.0)):
        study.add_trial(create_trial(
            params={"channel_block": cb}, distributions=dist, value=value,
            user_attrs={"algorithm": "window", "config": {"channel_block": cb},
                        "source": "measured"}))
    best = study.best_trial
    assert best.user_attrs["config"] == {"channel_block": 8}
    assert _runners_up(study, best) == [("window", {"channel_block": 16}),
                                        ("window", {"channel_block": 64})]
    model = study.trials[0]
    model.user_attrs["source"] = "model"  # a cost model's ranking has no luck to undo
    assert _runners_up(study, model) == []


def test_a_saved_model_keeps_its_glue_configs(records_dir, tmp_path):
    """ssmc.load runs the glue kernels with the configs the model was saved with (the manifest's
    plan), not the defaults: same bits."""
    recs = Records(load_target("cpu"))
    recs.write(_glue_record("conv1d", 256, CONV.as_dict()))
    recs.write(_glue_record("rmsnorm", 128, NORM))
    model = ssmc.compile(MAMBA, "cpu", seqlen=16, batch=1).eval()
    model.save(tmp_path / "m")
    for p in (records_dir / "cpu").glob("*.json"):
        p.unlink()  # the load must not need the records
    loaded = ssmc.load(tmp_path / "m").eval()
    glue = {q: n for q, n, _ in loaded.graph.walk() if n.OP in ("conv1d", "rmsnorm")}
    assert glue["layers.*.conv1d"].meta["config"] == CONV.as_dict()
    assert glue["norm_f"].meta["config"] == NORM
    assert all(n.meta["config_source"] == "record" for n in glue.values())
    tokens = torch.randint(0, 256, (1, 16))
    with torch.no_grad():
        torch.testing.assert_close(loaded(tokens), model(tokens), rtol=0, atol=0)
