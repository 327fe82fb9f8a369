"""Records: atomic JSON files keyed by family, shape bucket and dtype, with versions inside;
the compiler picks them up."""

import json
import threading

import pytest

import ssmc
from ssmc.cli import main
from ssmc.ir.spec import load_spec
from ssmc.passes import PassContext, run_pipeline
from ssmc.paths import zoo_dir
from ssmc.targets import load_target
from ssmc.tune.records import RecordKey, Records, make_record, seqlen_bucket, versions_for

MAMBA_KEY = dict(batch=2, seqlen=1024, channels=256, d_state=16)  # ir/mamba.yaml's SSM nodes


def _record(target, algorithm="sequential", config=None, source="measured", **key):
    k = RecordKey.of("selective_ssm/mamba1", **{**MAMBA_KEY, **key})
    return make_record(k, target, algorithm=algorithm, config=config or {"channel_block": 32},
                       source=source, time_us=1.0)


def test_seqlen_buckets_are_powers_of_two():
    assert [seqlen_bucket(n) for n in (1, 2, 3, 64, 65, 1000, 1024, 1025)] == \
        [1, 2, 4, 64, 128, 1024, 1024, 2048]


def test_round_trip_through_an_atomic_write(tmp_path):
    cpu = load_target("cpu")
    recs = Records(cpu, [tmp_path / "user", tmp_path / "shipped"])
    path = recs.write(_record(cpu))
    assert path.parent == tmp_path / "user"
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary left behind
    got = recs.find(RecordKey.of("selective_ssm/mamba1", **MAMBA_KEY))
    assert got["config"] == {"channel_block": 32} and got["source"] == "measured"
    assert got["versions"] == versions_for(cpu.backend) and set(got["versions"]) == {"ssmc", "torch", "tvm"}


def test_lookup_by_bucket(tmp_path):
    cpu = load_target("cpu")
    recs = Records(cpu, [tmp_path])
    recs.write(_record(cpu))
    key = lambda **kw: RecordKey.of("selective_ssm/mamba1", **{**MAMBA_KEY, **kw})  # noqa: E731
    assert recs.find(key(seqlen=600)) is not None  # 600 and 1024 share the 1024 bucket
    assert recs.find(key(seqlen=1025)) is None
    assert recs.find(key(batch=4)) is None
    assert recs.find(key(channels=512)) is None
    assert recs.find(RecordKey.of("selective_ssm/mamba1", dtype="float16", **MAMBA_KEY)) is None


def test_other_versions_and_broken_files_are_ignored(tmp_path):
    cpu = load_target("cpu")
    recs = Records(cpu, [tmp_path / "user", tmp_path / "shipped"])
    key = RecordKey.of("selective_ssm/mamba1", **MAMBA_KEY)
    stale = _record(cpu, config={"channel_block": 8})
    stale["versions"] = {**stale["versions"], "tvm": "0.19.0"}
    recs.write(stale)
    assert recs.find(key) is None  # measured with another TVM: not trusted
    recs.write(_record(cpu, config={"channel_block": 64}), tmp_path / "shipped")
    assert recs.find(key)["config"] == {"channel_block": 64}  # the next directory's good record
    (tmp_path / "user" / key.filename()).write_text("{ half a fi")
    assert recs.find(key)["config"] == {"channel_block": 64}


def test_user_records_win_over_shipped_ones(tmp_path):
    cpu = load_target("cpu")
    recs = Records(cpu, [tmp_path / "user", tmp_path / "shipped"])
    recs.write(_record(cpu, config={"channel_block": 64}), tmp_path / "shipped")
    recs.write(_record(cpu, config={"channel_block": 16}))
    assert recs.find(RecordKey.of("selective_ssm/mamba1", **MAMBA_KEY))["config"] == {"channel_block": 16}


def test_concurrent_writers_leave_one_whole_record(tmp_path):
    cpu = load_target("cpu")
    recs = Records(cpu, [tmp_path])
    threads = [threading.Thread(target=lambda i=i: [recs.write(_record(cpu, config={"channel_block": 8 * (i + 1)}))
                                                    for _ in range(20)]) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    files = list(tmp_path.iterdir())
    assert len(files) == 1
    assert json.loads(files[0].read_text())["config"]["channel_block"] in (8, 16, 24, 32)


def test_default_records_read_the_env_dir_then_schedules(records_dir):
    recs = Records(load_target("sm_90"))
    assert recs.directories[0] == records_dir / "sm_90"
    assert recs.directories[1].parts[-2:] == ("schedules", "sm_90")


# ---- the compiler picks records up -----------------------------------------------------------

def test_a_record_makes_the_pipeline_choose_its_algorithm_and_config(records_dir):
    sm90 = load_target("sm_90")
    cfg = {"block_d": 4, "block_l": 32, "num_warps": 2, "num_stages": 1}
    Records(sm90).write(_record(sm90, algorithm="associative", config=cfg, source="model"))
    g = load_spec(zoo_dir() / "mamba.yaml")
    ctx = PassContext(target=sm90, bindings={"batch": 2, "seqlen": 1000}, records=Records(sm90))
    out = run_pipeline(g, ctx)
    ssm = [n for _, n, _ in out.walk() if n.OP == "selective_ssm"]
    assert ssm and all(n.meta["algorithm"] == "associative" for n in ssm)
    assert all(n.meta["why"] == "tuned record (model)" for n in ssm)
    assert all(n.meta["config"] == cfg and n.meta["config_source"] == "record" for n in ssm)


def test_ssmc_explain_shows_the_tuned_record(records_dir, capsys):
    sm90 = load_target("sm_90")
    Records(sm90).write(_record(sm90, algorithm="associative", config={"block_d": 4}, source="model"))
    assert main(["explain", str(zoo_dir() / "mamba.yaml"), "--target", "sm_90"]) == 0
    decisions = capsys.readouterr().out.split("== decisions ==")[1]
    assert "associative" in decisions and "tuned record (model)" in decisions


def test_ssmc_compile_uses_the_records_and_the_executor_gets_the_config(records_dir):
    from ssmc.runtime.executors import tvm_config

    cpu = load_target("cpu")
    cfg = {"channel_block": 32, "vector_width": 8, "n_unroll": 0, "threads": 0, "layout": "bld",
           "time_tile": 16, "exp_degree": 6}
    Records(cpu).write(_record(cpu, config=cfg, seqlen=64))
    model = ssmc.compile(zoo_dir() / "mamba.yaml", "cpu", seqlen=64, batch=2)
    ssm = [n for _, n, _ in model.graph.walk() if n.OP == "selective_ssm"]
    assert all(n.meta["config_source"] == "record" and n.meta["config"] == cfg for n in ssm)
    assert all(n.meta["run"][2] == cfg for n in ssm)  # what the runner hands the executor
    assert tvm_config(cfg).as_dict() == cfg
    off = ssmc.compile(zoo_dir() / "mamba.yaml", "cpu", seqlen=64, batch=2, records=False)
    assert all(n.meta["config_source"] == "default" for _, n, _ in off.graph.walk()
               if n.OP == "selective_ssm")


def test_tvm_config_keeps_kernel_defaults_for_an_empty_or_partial_dict():
    from ssmc.codegen.tvm.config import default_config
    from ssmc.runtime.executors import tvm_config, triton_config

    assert tvm_config({}) is None  # the kernel then takes its own default
    assert tvm_config({"exp_degree": 4}) == default_config("llvm").replace(exp_degree=4)
    seq = triton_config("selective_ssm/mamba1", "sequential", {"BLOCK_D": 32, "num_warps": 4, "CHUNK": 64})
    assert (seq.block_d, seq.num_warps) == (32, 4)  # CHUNK is not a knob of the sequential kernel
    with pytest.raises(ValueError):
        triton_config("selective_ssm/mamba1", "sequential", {"block_d": 3})
