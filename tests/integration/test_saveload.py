"""CompiledModel.save / ssmc.load: same outputs, same kernel choices, no recompile (the TVM
kernel comes from the build cache), a clear message and a rebuild on a version mismatch, atomic
writes."""

from __future__ import annotations

import importlib
import json
import warnings

import pytest
import torch

import ssmc
from ssmc.errors import SsmcError
from ssmc.ir.spec import load_spec
from ssmc.paths import zoo_dir
from ssmc.runtime.saveload import KERNELS, MANIFEST, VersionMismatchError, VersionMismatchWarning

DIMS = {"d_model": 32, "n_layers": 2}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    torch.manual_seed(0)
    model = ssmc.compile(load_spec(zoo_dir() / "mamba.yaml", dims=DIMS), "cpu", seqlen=24).eval()
    with torch.no_grad():  # weights the init would not produce
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    tokens = torch.randint(0, 256, (2, 24))
    with torch.no_grad():
        out = model(tokens)
    d = tmp_path_factory.mktemp("saved") / "mamba"
    model.save(d)
    return model, tokens, out, d


def _tvm_cache():
    build = importlib.import_module("ssmc.codegen.tvm.build")
    scan = importlib.import_module("ssmc.codegen.tvm.selective_scan")
    return build.DEFAULT_CACHE, scan


def test_round_trip_same_outputs_without_recompiling(saved):
    model, tokens, out, d = saved
    cache, scan = _tvm_cache()
    # what a new process sees: nothing loaded in memory, the build cache on disk
    cache.clear_memory()  # its kernels and the hot-path memo
    compiled_before, disk_before = cache.stats.compiled, cache.stats.disk_hits
    loaded = ssmc.load(d).eval()
    with torch.no_grad():
        got = loaded(tokens)
    assert cache.stats.compiled == compiled_before  # no TVM build
    assert cache.stats.disk_hits > disk_before  # the saved config's kernel came from the cache
    torch.testing.assert_close(got, out, rtol=0, atol=0)
    assert loaded.kernels == model.kernels
    assert loaded.version_mismatch == []
    for (q1, n1, _), (q2, n2, _) in zip(model.graph.walk(), loaded.graph.walk()):
        assert q1 == q2
        assert n1.meta.get("algorithm") == n2.meta.get("algorithm")
        assert n1.meta.get("config") == n2.meta.get("config")
        assert n1.meta.get("config_source") == n2.meta.get("config_source")
    assert {k: v.shape for k, v in loaded.state_dict().items()} == \
        {k: v.shape for k, v in model.state_dict().items()}


def test_manifest_records_versions_and_choices(saved):
    _, _, _, d = saved
    m = json.loads((d / MANIFEST).read_text())
    assert set(m["versions"]) == {"ssmc", "torch", "triton", "tvm", "target"}
    assert m["versions"]["torch"] == torch.__version__
    assert m["versions"]["target"]["name"] == "cpu"
    node = m["nodes"]["mamba_block/ssm"]
    assert node["qname"] == "layers.*.ssm" and node["algorithm"] == "sequential"
    assert node["kernel"].startswith("tvm:")
    assert m["dims"]["d_model"] == 32 and "name: mamba" in m["spec"]


def test_version_mismatch_warns_and_rebuilds(saved, tmp_path):
    model, tokens, out, d = saved
    copy = tmp_path / "old"
    copy.mkdir()
    m = json.loads((d / MANIFEST).read_text())
    m["versions"]["tvm"] = "0.19.0"
    m["versions"]["target"]["llvm_mcpu"] = "some-other-cpu"
    (copy / MANIFEST).write_text(json.dumps(m))
    (copy / m["weights"]).write_bytes((d / m["weights"]).read_bytes())
    with pytest.warns(VersionMismatchWarning, match=r"tvm 0\.19\.0 -> .*rebuilding") as rec:
        loaded = ssmc.load(copy).eval()
    assert "target.llvm_mcpu some-other-cpu" in str(rec[0].message)
    assert loaded.version_mismatch
    with torch.no_grad():
        torch.testing.assert_close(loaded(tokens), out, rtol=6e-4, atol=2e-3)
    with pytest.raises(VersionMismatchError, match="tvm 0.19.0"):
        ssmc.load(copy, on_mismatch="error")


STACK = [("ssmc", "0.0.1"), ("torch", "2.0.0"), ("triton", "2.1.0"), ("tvm", "0.19.0"),
         ("target.name", "sm_90"), ("target.backend", "triton"), ("target.arch", "sm_90"),
         ("target.isa", ["sse2"])]


@pytest.mark.parametrize("key,old", STACK, ids=[k for k, _ in STACK])
def test_every_stack_version_is_checked(saved, tmp_path, key, old):
    """Each recorded version (ssmc, torch, triton, tvm, the target's fields) is compared: any
    one differing is named in the message (on_mismatch='error' raises before any rebuild)."""
    _, _, _, d = saved
    m = json.loads((d / MANIFEST).read_text())
    where, field = (m["versions"]["target"], key[7:]) if key.startswith("target.") else \
        (m["versions"], key)
    where[field] = old
    (tmp_path / MANIFEST).write_text(json.dumps(m))
    with pytest.raises(VersionMismatchError, match=rf"{key} .* -> "):
        ssmc.load(tmp_path, target="cpu", on_mismatch="error")


def test_other_format_and_bad_option_are_refused(saved, tmp_path):
    _, _, _, d = saved
    m = json.loads((d / MANIFEST).read_text())
    m["format"] = 99
    (tmp_path / MANIFEST).write_text(json.dumps(m))
    with pytest.raises(SsmcError, match="format 99.*reads format 1"):
        ssmc.load(tmp_path)
    with pytest.raises(ValueError, match="on_mismatch"):
        ssmc.load(d, on_mismatch="ignore")


def test_save_is_atomic_and_replaces_old_weights(saved, tmp_path):
    model, _, _, _ = saved
    d = tmp_path / "m"
    model.save(d)
    first = json.loads((d / MANIFEST).read_text())["weights"]
    with torch.no_grad():
        model.lm_head.weight.add_(1.0)
    try:
        model.save(d)
    finally:
        with torch.no_grad():
            model.lm_head.weight.sub_(1.0)
    names = sorted(p.name for p in d.iterdir())
    m = json.loads((d / MANIFEST).read_text())
    second = m["weights"]
    # no temporaries left, beside the manifest or among the kernels
    assert first != second and names == sorted([MANIFEST, second, KERNELS])
    listed = set(m["kernels"]) | {e["meta"] for e in m["kernels"].values()}
    assert sorted(p.name for p in (d / KERNELS).iterdir()) == sorted(listed)


def test_load_errors_are_clear(saved, tmp_path):
    _, _, _, d = saved
    with pytest.raises(SsmcError, match="no manifest.json"):
        ssmc.load(tmp_path)
    bad = tmp_path / "bad"
    bad.mkdir()
    m = json.loads((d / MANIFEST).read_text())
    (bad / MANIFEST).write_text(json.dumps(m))
    (bad / m["weights"]).write_bytes(b"truncated")
    with pytest.raises(SsmcError, match="does not match the hash"):
        ssmc.load(bad)


def test_nn_layer_saves_and_loads(tmp_path):
    import ssmc.nn as snn

    layer = snn.Mamba(16, d_state=4).eval()
    x = torch.randn(1, 7, 16)
    layer.save(tmp_path / "layer")
    with warnings.catch_warnings():
        warnings.simplefilter("error", VersionMismatchWarning)
        loaded = ssmc.load(tmp_path / "layer").eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), layer(x), rtol=0, atol=0)
