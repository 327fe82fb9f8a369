"""CompiledModel.save keeps the compiled TVM kernels next to the weights (kernels/, listed in
manifest.json with their hashes) and ssmc.load registers them as a read-only lookup place of the
build cache: a fresh process with an EMPTY build cache loads the model and runs it without
compiling anything, with the same outputs.  A missing or corrupted kernel file is reported
(SavedKernelWarning) and compiled again, never loaded; on a version mismatch the saved kernels
are not used."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
import warnings

import pytest
import torch

import ssmc
from ssmc.ir.spec import load_spec
from ssmc.paths import zoo_dir
from ssmc.runtime.saveload import (KERNELS, MANIFEST, SavedKernelWarning,
                                   VersionMismatchWarning)

DIMS = {"d_model": 32, "n_layers": 2}

# Runs in a fresh interpreter: load, run, report the build cache's counters and the warnings.
CHILD = textwrap.dedent("""
    import json, sys, warnings
    import torch
    import ssmc
    from ssmc.codegen.tvm.build import DEFAULT_CACHE, cache_root

    saved, inputs, result = sys.argv[1:4]
    tokens = torch.load(inputs)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = ssmc.load(saved).eval()
        with torch.no_grad():
            out = model(tokens)
        torch.manual_seed(0)
        model.train()
        model(tokens).float().square().mean().backward()  # the training kernels too
    torch.save(out, result + ".pt")
    s = DEFAULT_CACHE.stats
    json.dump({"compiled": s.compiled, "disk_hits": s.disk_hits, "saved_hits": s.saved_hits,
               "cache": str(cache_root()), "saved_kernels": model.saved_kernels,
               "warnings": [f"{w.category.__name__}: {w.message}" for w in caught]},
              open(result, "w"))
""")


@pytest.fixture(scope="module", autouse=True)
def _no_lookups_left():
    """ssmc.load registers the directories it loads in the process-wide build cache: leave it
    as this module found it."""
    from ssmc.codegen.tvm.build import DEFAULT_CACHE

    before = dict(DEFAULT_CACHE._lookup)
    yield
    DEFAULT_CACHE._lookup.clear()
    DEFAULT_CACHE._lookup.update(before)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    torch.manual_seed(0)
    model = ssmc.compile(load_spec(zoo_dir() / "mamba.yaml", dims=DIMS), "cpu", seqlen=24)
    with torch.no_grad():  # weights the init would not produce
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    model.eval()
    tokens = torch.randint(0, 256, (2, 24))
    with torch.no_grad():
        out = model(tokens)
    base = tmp_path_factory.mktemp("kernels")
    d = base / "mamba"
    model.save(d)
    torch.save(tokens, base / "tokens.pt")
    return model, tokens, out, d


def _child(saved_dir, tokens_path, tmp_path, name="result"):
    """Load and run `saved_dir` in a new process whose build cache is an empty directory."""
    cache = tmp_path / f"{name}-empty-cache"
    cache.mkdir()
    result = tmp_path / f"{name}.json"
    env = dict(os.environ, SSMC_CACHE_DIR=str(cache))
    proc = subprocess.run([sys.executable, "-c", CHILD, str(saved_dir), str(tokens_path),
                           str(result)], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    info = json.loads(result.read_text())
    info["out"] = torch.load(str(result) + ".pt")
    info["written"] = sorted(p.name for p in cache.rglob("*") if p.is_file())
    return info


def test_manifest_lists_the_kernels_with_their_hashes(saved):
    model, _, _, d = saved
    m = json.loads((d / MANIFEST).read_text())
    kernels = m["kernels"]
    families = {e["family"] for e in kernels.values()}
    # the scan (inference and training kernels, and its backward) and the CPU glue kernels
    assert {"selective_scan", "selective_scan_bwd"} <= families, families
    for name, e in kernels.items():
        data = (d / KERNELS / name).read_bytes()
        assert name == f"{e['family']}-{e['key']}.so"
        assert hashlib.sha256(data).hexdigest() == e["sha256"] and len(data) == e["bytes"]
        meta = (d / KERNELS / e["meta"]).read_bytes()
        assert hashlib.sha256(meta).hexdigest() == e["meta_sha256"]
        assert json.loads(meta)["family"] == e["family"]
    # saving ran the model: its weights, modes and gradients are as they were
    assert not model.training and all(p.grad is None for p in model.parameters())


def test_fresh_process_with_an_empty_cache_compiles_nothing(saved, tmp_path):
    model, tokens, out, d = saved
    info = _child(d, d.parent / "tokens.pt", tmp_path)
    assert info["cache"] == str(tmp_path / "result-empty-cache")
    assert info["compiled"] == 0, info
    assert info["saved_hits"] >= 3 and info["disk_hits"] == 0
    assert not info["written"]  # nothing built, nothing written to the cache
    assert not [w for w in info["warnings"] if "Kernel" in w or "Mismatch" in w], info["warnings"]
    listed = json.loads((d / MANIFEST).read_text())["kernels"]
    assert sorted(info["saved_kernels"]) == sorted(listed)
    torch.testing.assert_close(info["out"], out, rtol=0, atol=0)


def test_missing_or_corrupted_kernel_is_rebuilt_with_a_warning(saved, tmp_path):
    model, tokens, out, d = saved
    copy = tmp_path / "copy"
    shutil.copytree(d, copy)
    kernels = json.loads((copy / MANIFEST).read_text())["kernels"]
    scans = sorted(n for n, e in kernels.items() if e["family"] == "selective_scan")
    others = sorted(n for n, e in kernels.items() if e["family"] != "selective_scan")
    corrupt, missing = scans[0], others[0]
    data = bytearray((copy / KERNELS / corrupt).read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte: still a loadable-looking .so
    (copy / KERNELS / corrupt).write_bytes(bytes(data))
    (copy / KERNELS / missing).unlink()
    info = _child(copy, d.parent / "tokens.pt", tmp_path)
    msgs = "\n".join(info["warnings"])
    assert f"SavedKernelWarning: ssmc.load({str(copy)!r}): saved kernel kernels/{corrupt} " \
           "does not match its sha256" in msgs
    assert f"saved kernel kernels/{missing} is missing" in msgs and "compiled again" in msgs
    assert corrupt not in info["saved_kernels"] and missing not in info["saved_kernels"]
    assert info["compiled"] == 2, info  # exactly the two bad ones, the rest from the copy
    assert info["saved_hits"] >= 1
    assert f"{corrupt}" in info["written"]  # rebuilt into the (empty) build cache
    torch.testing.assert_close(info["out"], out, rtol=0, atol=0)


def test_a_kernel_changed_after_load_is_not_loaded(saved, tmp_path):
    """The cache checks a saved file's hash when it loads it, not only ssmc.load: a file
    replaced between load and first use is compiled again (with the warning)."""
    from ssmc.codegen.tvm.build import DEFAULT_CACHE, KernelCache

    _, tokens, out, d = saved
    copy = tmp_path / "copy"
    shutil.copytree(d, copy)
    loaded = ssmc.load(copy).eval()
    assert loaded.saved_kernels
    name = loaded.saved_kernels[0]
    (copy / KERNELS / name).write_bytes(b"not a shared library")
    family = name.rsplit("-", 1)[0]
    key = name.rsplit("-", 1)[1][:-3]
    cache = KernelCache(root=tmp_path / "empty")
    mine = str((copy / KERNELS).resolve())
    assert mine in DEFAULT_CACHE._lookup  # the registration ssmc.load made
    # only this copy's registration: other tests' saved models hold the same file name intact
    cache._lookup = {mine: DEFAULT_CACHE._lookup[mine]}
    with pytest.warns(SavedKernelWarning, match="does not match its recorded sha256"):
        got = cache._from_lookup(name, family, key, family)
    assert got is None and cache.stats.saved_hits == 0
    DEFAULT_CACHE.remove_lookup(copy / KERNELS)
    assert str((copy / KERNELS).resolve()) not in DEFAULT_CACHE._lookup


def test_a_deleted_saved_model_is_forgotten_quietly(saved, tmp_path):
    """Deleting a loaded model's directory is not an error: the cache drops its registration
    on the next lookup, without a warning, and builds the kernel as usual."""
    import warnings

    from ssmc.codegen.tvm.build import DEFAULT_CACHE, KernelCache

    _, tokens, out, d = saved
    copy = tmp_path / "gone"
    shutil.copytree(d, copy)
    loaded = ssmc.load(copy).eval()
    name = loaded.saved_kernels[0]
    mine = str((copy / KERNELS).resolve())
    cache = KernelCache(root=tmp_path / "empty")
    cache._lookup = {mine: DEFAULT_CACHE._lookup[mine]}
    shutil.rmtree(copy)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = cache._from_lookup(name, "f", name.rsplit("-", 1)[1][:-3], "f")
    assert got is None and mine not in cache._lookup
    DEFAULT_CACHE.remove_lookup(copy / KERNELS)


def test_version_mismatch_does_not_use_the_saved_kernels(saved, tmp_path):
    from ssmc.codegen.tvm.build import DEFAULT_CACHE

    model, tokens, out, d = saved
    copy = tmp_path / "old"
    shutil.copytree(d, copy)
    m = json.loads((copy / MANIFEST).read_text())
    m["versions"]["torch"] = "2.0.0"
    (copy / MANIFEST).write_text(json.dumps(m))
    n = len(m["kernels"])
    with pytest.warns(VersionMismatchWarning,
                      match=rf"torch 2\.0\.0 -> .*the {n} saved kernels are not used"):
        loaded = ssmc.load(copy).eval()
    assert loaded.saved_kernels == []
    assert (copy / KERNELS).resolve() not in DEFAULT_CACHE.lookup_dirs()
    with torch.no_grad():
        torch.testing.assert_close(loaded(tokens), out, rtol=6e-4, atol=2e-3)


def test_save_without_kernels_and_resave_over_a_loaded_model(saved, tmp_path):
    model, tokens, out, d = saved
    bare = tmp_path / "bare"
    from ssmc.runtime.saveload import save

    save(model, bare, kernels=False)
    assert json.loads((bare / MANIFEST).read_text())["kernels"] == {}
    assert not (bare / KERNELS).exists()
    with warnings.catch_warnings():
        warnings.simplefilter("error", SavedKernelWarning)
        loaded = ssmc.load(bare).eval()
        assert loaded.saved_kernels == []
        # a loaded model saved again (into another directory and into its own) keeps them all
        again = tmp_path / "again"
        ssmc.load(d).save(again)
        first = json.loads((d / MANIFEST).read_text())["kernels"]
        assert set(json.loads((again / MANIFEST).read_text())["kernels"]) == set(first)
        own = ssmc.load(again)
        own.save(again)
        assert set(json.loads((again / MANIFEST).read_text())["kernels"]) == set(first)
    with torch.no_grad():
        torch.testing.assert_close(loaded(tokens), out, rtol=0, atol=0)
