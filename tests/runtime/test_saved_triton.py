"""A saved model's Triton kernels (ssmc.runtime.saved_triton): copied out of Triton's cache with
their hashes, put back into an empty cache on load, and then found there by Triton's own
compile (a cache hit: nothing compiled).  The compile runs for sm_90 on this CPU-only machine
(ptxas ships with triton), in a subprocess without TRITON_INTERPRET (the test session
interprets).  The model-level round trip on a real GPU is the gpu-marked test."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import warnings

import pytest

import ssmc
from ssmc.runtime.saved_triton import compiled_kernels

_CHILD = textwrap.dedent('''
    import json, sys, warnings
    from pathlib import Path
    import triton, triton.language as tl
    from triton import knobs
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from ssmc.runtime.saved_triton import install_triton, save_triton
    from ssmc.runtime.saveload import SavedKernelWarning, _write_if_changed

    @triton.jit
    def axpy(x, y, n, BLOCK: tl.constexpr):
        o = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        tl.store(y + o, 2.0 * tl.load(x + o, mask=o < n) + tl.load(y + o, mask=o < n),
                 mask=o < n)

    root = Path(sys.argv[1])
    src = lambda: ASTSource(axpy, {"x": "*fp32", "y": "*fp32", "n": "i32", "BLOCK": "constexpr"},
                            {"BLOCK": 128})
    target = GPUTarget("cuda", 90, 32)
    hits = []
    knobs.compilation.listener = lambda **kw: hits.append(kw["cache_hit"])
    knobs.cache.dir = str(root / "cache_a")
    k = triton.compile(src(), target=target)
    entries = save_triton([k], root / "model", _write_if_changed)
    knobs.cache.dir = str(root / "cache_b")  # a fresh machine's empty cache
    first = install_triton(root / "model", entries, SavedKernelWarning)
    again = install_triton(root / "model", entries, SavedKernelWarning)
    k2 = triton.compile(src(), target=target)
    # a damaged copy: warned about and left out
    cubin = next(n for n in entries[k.hash]["files"] if n.endswith(".cubin"))
    (root / "model" / "triton" / k.hash / cubin).write_bytes(b"truncated")
    knobs.cache.dir = str(root / "cache_c")
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        bad = install_triton(root / "model", entries, SavedKernelWarning)
    print(json.dumps({"hash": k.hash, "entries": entries, "first": first, "again": again,
                      "hits": hits, "same": k2.hash == k.hash and k2.asm["cubin"] == k.asm["cubin"],
                      "bad": bad, "warnings": [str(x.message) for x in w]}))
''')


def test_saved_triton_kernels_are_cache_hits_after_install(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    script = tmp_path / "child.py"  # @triton.jit needs its source in a file
    script.write_text(_CHILD)
    proc = subprocess.run([sys.executable, str(script), str(tmp_path)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    h = r["hash"]
    entry = r["entries"][h]
    assert entry["name"] == "axpy" and entry["meta"] == "axpy.json"
    assert any(n.endswith(".cubin") for n in entry["files"])
    for name in entry["files"]:
        assert (tmp_path / "model" / "triton" / h / name).is_file()
    assert r["first"] == [[h], []] and r["again"] == [[], [h]]
    assert r["hits"] == [False, True]  # compiled once; after the install, a cache hit
    assert r["same"]
    assert r["bad"] == [[], []]
    assert any("does not match its sha256" in m and h in m for m in r["warnings"])
    assert not (tmp_path / "cache_c" / h).exists() or \
        not any(p.name.startswith("__grp__") for p in (tmp_path / "cache_c" / h).iterdir())


class _FakeCompiled:
    def __init__(self, h):
        self.hash, self.name, self.metadata_group = h, "k", {"k.json": "/nowhere"}


class _FakeJit:
    def __init__(self, *kernels):
        self.device_caches = {0: ({i: k for i, k in enumerate(kernels)}, None, None, None, None)}


def test_compiled_kernels_collects_every_specialisation():
    a, b = _FakeCompiled("a" * 64), _FakeCompiled("b" * 64)
    assert compiled_kernels([_FakeJit(a, b), _FakeJit()]) == [a, b]
    assert compiled_kernels([object()]) == []  # interpreter objects have no device caches


def test_record_launches_sees_the_jit_functions_launched():
    import torch

    from ssmc.codegen.triton.common import KernelLaunch, record_launches

    calls = []

    class Kernel:
        def __getitem__(self, grid):
            return lambda **kw: calls.append((grid, kw))

    k = Kernel()
    with record_launches() as seen:
        KernelLaunch(k, (1,), {"x": torch.zeros(1)}, {"B": 2}).run()
    KernelLaunch(k, (1,), {}, {}).run()
    assert seen == {k} and len(calls) == 2


def test_cpu_model_saves_no_triton_directory(tmp_path):
    model = ssmc.compile("ir/s4d.yaml", "cpu", seqlen=16)
    d = model.save(tmp_path / "m", kernels=True)
    m = json.loads((d / "manifest.json").read_text())
    assert m["triton_kernels"] == {} and not (d / "triton").exists()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert ssmc.load(d).saved_triton_kernels == []


@pytest.mark.gpu
def test_gpu_model_round_trip_compiles_nothing(tmp_path):
    """On a GPU: save keeps the Triton kernels; a fresh process with an empty Triton cache
    loads them and runs the model with every compile a cache hit."""
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    model = ssmc.compile("ir/mamba.yaml", "auto", seqlen=64).cuda()
    d = model.save(tmp_path / "m")
    m = json.loads((d / "manifest.json").read_text())
    assert m["triton_kernels"], "no Triton kernel was recorded"
    child = textwrap.dedent(f'''
        import json, torch, ssmc
        from triton import knobs
        hits = []
        knobs.compilation.listener = lambda **kw: hits.append(kw["cache_hit"])
        model = ssmc.load({str(d)!r}, device="cuda")
        tokens = torch.randint(0, 100, (2, 64), device="cuda")
        with torch.no_grad():
            model(tokens)
        print(json.dumps({{"hits": hits, "saved": model.saved_triton_kernels}}))
    ''')
    env = {**os.environ, "TRITON_CACHE_DIR": str(tmp_path / "empty_cache")}
    env.pop("TRITON_INTERPRET", None)
    proc = subprocess.run([sys.executable, "-c", child], env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    assert r["saved"] and r["hits"] and all(r["hits"]), r
