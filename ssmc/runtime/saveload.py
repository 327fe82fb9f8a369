"""Saving a CompiledModel to a directory and loading it back.

The directory holds:

  manifest.json       format version, the spec text and its resolved dims, the dtype, the shape
                      bucket, the target, the versions of the stack (ssmc, torch, triton, tvm,
                      target), and per SSM node the chosen algorithm and kernel config (with
                      where they came from: cost model, tuned record, spec);
  weights-<sha>.pt    the state dict (torch.save), named by its content hash;
  kernels/            the compiled TVM kernels the model runs (<family>-<key>.so, the build
                      cache's files, with their .json metadata), each listed in the manifest
                      with its sha256.  Which ones: `save` runs the model at its shape
                      bucket, shortened (inference, then a forward + backward when it has
                      trainable parameters, on random inputs, weights and gradients
                      untouched) and records every kernel called (build.record_kernels).
  triton/             on a GPU, the compiled Triton kernels the model launched, one directory
                      per Triton compile hash (Triton's cache files), listed with their
                      sha256s; `load` puts them back into Triton's cache (saved_triton).

Writes are atomic: the weights go to a temporary file that is renamed into place, then the
manifest (which names the weights file and its hash) is written the same way; a reader sees the
old model or the new one, never half of one.  Older weights files are removed after.

Loading rebuilds the module from the spec and forces the saved algorithm and config on every
node, so the kernels are the same ones: the TVM build cache is keyed by the kernel config, so a
kernel built before (by this process or any other) is loaded from disk, not compiled again.
The saved kernels/ directory is registered as a read-only lookup place of the build cache
(KernelCache.add_lookup), so on a fresh machine with an empty cache nothing is compiled either;
a kernel file that is missing or does not match its hash is reported (`SavedKernelWarning`)
and not used: that kernel is compiled again on first use, never loaded from a bad file.
When the saved versions differ from this process's (another ssmc, torch, triton, tvm or target),
the saved choices may not hold here: `load` says which versions differ (a
`VersionMismatchWarning`) and rebuilds, re-selecting algorithms and configs for this stack;
`on_mismatch="error"` raises instead.  Either way the weights are the saved ones, and the saved
kernels are not used.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import shutil
import sys
import tempfile
import warnings
from importlib import metadata
from pathlib import Path

import torch

import ssmc
from ssmc.errors import SsmcError

FORMAT = 1
MANIFEST = "manifest.json"
KERNELS = "kernels"
# <family>-<32 hex key>.so: the only names a manifest may list (no paths)
_KERNEL_NAME = re.compile(r"[A-Za-z0-9_]+-[0-9a-f]{32}\.so")


class VersionMismatchWarning(UserWarning):
    """The saved model was compiled by another stack: it was rebuilt for this one."""


class VersionMismatchError(SsmcError):
    pass


class SavedKernelWarning(UserWarning):
    """A kernel file of a saved model is missing, changed or does not load: it is compiled
    again instead."""


def _dist_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def target_fingerprint(target) -> dict:
    return {"name": target.name, "backend": target.backend, "arch": target.arch,
            "llvm_mcpu": target.llvm_mcpu, "isa": list(target.isa or ())}


def versions(target) -> dict:
    """The versions a saved model depends on (read without importing triton or tvm)."""
    return {
        "ssmc": ssmc.__version__,
        "torch": torch.__version__,
        "triton": _dist_version("triton"),
        "tvm": _dist_version("apache-tvm"),
        "target": target_fingerprint(target),
    }


def _spec_text(graph) -> str:
    src = getattr(graph, "source", None)
    if isinstance(src, Path) or (isinstance(src, str) and "\n" not in src
                                 and src.endswith((".yaml", ".yml"))):
        return Path(src).read_text()
    if isinstance(src, str):
        return src
    raise SsmcError(f"save: the spec of {graph.name} is not available as text")


def _write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def node_plan(model) -> dict:
    """Per SSM node of the lowered graph: the algorithm and config that run it; per glue node
    with a tuned kernel (passes.schedule.GLUE_KERNELS: the CPU's conv1d, rmsnorm) its kernel
    name as the algorithm, and its config."""
    plan = {}
    for qname, node, g in model.graph.walk():
        meta = node.meta
        if "algorithm" in meta:
            alg, kernel = meta["algorithm"], model.kernels.get(qname, "reference")
        elif "kernel" in meta:  # a glue node
            alg, kernel = meta["kernel"].rsplit("/", 1)[-1], f"tvm:{meta['kernel']}"
        else:
            continue
        plan[f"{g.name}/{node.name}"] = {
            "qname": qname, "algorithm": alg, "config": meta.get("config") or {},
            "config_source": meta.get("config_source"), "why": meta.get("why"),
            "kernel": kernel,
        }
    return plan


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# The length `used_kernels` runs a model at (at most): the TVM kernels' signatures do not depend
# on the batch or the length (b and L are symbolic), except where a kernel's unrolled taps are
# min(conv length, L): runs are at least one longer than the longest conv node.  (A reference
# backward can be slow at long L: the 2-D SSM's took 31 s at L = 1024.)
WARMUP_SEQLEN = 128


def warmup_bindings(model) -> dict:
    """The model's shape bucket with batch <= 2 and seqlen <= max(WARMUP_SEQLEN, longest conv
    + 1)."""
    b = dict(model.bindings)
    longest = 0
    for graph in (model.graph, getattr(model, "source_graph", model.graph)):
        for _, node, _ in graph.walk():
            for n in (node, node.meta.get("epilogue")):  # a conv the passes folded in
                if n is not None and n.OP == "conv" and isinstance(n.length, int):
                    longest = max(longest, n.length)
    if "seqlen" in b:
        b["seqlen"] = min(int(b["seqlen"]), max(WARMUP_SEQLEN, longest + 1))
    if "batch" in b:
        b["batch"] = min(int(b["batch"]), 2)
    return b


def used_kernels(model) -> tuple[dict, list]:
    """The compiled kernels `model` calls: ({file name: build.Kernel} of the TVM ones, [triton
    CompiledKernel]).  It runs on random inputs of its shape bucket (shortened:
    warmup_bindings) inside build.record_kernels() / common.record_launches(), in eval mode,
    once without gradients (the inference kernels) and, when a parameter is trainable, once
    forward + backward (the training kernels).  The modes of its modules and the gradients of
    its parameters are put back after.  ({}, []) for a model that runs no compiled kernels."""
    from ssmc.runtime.dispatch import backend_of

    backend = backend_of(model.target) if getattr(model, "target", None) is not None else None
    params = list(model.parameters())
    device = params[0].device if params else torch.device("cpu")
    if (backend, device.type) not in (("tvm", "cpu"), ("triton", "cuda")):
        return {}, []
    from ssmc.semantics.inputs import random_inputs

    inputs = random_inputs(model.graph, warmup_bindings(model), seed=0, device=device)
    modes = [(m, m.training) for m in model.modules()]
    grads = [(p, p.grad) for p in params]
    try:
        with _recording(backend) as (used, launched):
            model.eval()
            with torch.no_grad():
                model(**inputs)
            if any(p.requires_grad for p in params):
                with torch.enable_grad():
                    out = model(**inputs)
                    outs = out if isinstance(out, (tuple, list)) else [out]
                    loss = [o.float().mean() for o in outs
                            if isinstance(o, torch.Tensor) and o.requires_grad]
                    if loss:
                        torch.stack(loss).sum().backward()
    finally:
        for m, mode in modes:
            m.training = mode
        for p, g in grads:
            p.grad = g
    from ssmc.runtime.saved_triton import compiled_kernels

    return dict(used), compiled_kernels(launched)


@contextlib.contextmanager
def _recording(backend: str):
    """(TVM kernels called, Triton JIT functions launched) inside the block; only the
    backend's own recorder runs (importing the other could be slow or absent)."""
    if backend == "tvm":
        from ssmc.codegen.tvm.build import record_kernels

        with record_kernels() as used:
            yield used, set()
    else:
        from ssmc.codegen.triton.common import record_launches

        with record_launches() as launched:
            yield {}, launched


def _save_kernels(model, d: Path) -> tuple[dict, dict]:
    """Copy the kernels `model` runs into d/kernels/ (TVM) and d/triton/ (Triton), atomically,
    each file; their manifest entries: ({file name: {family, key, sha256, bytes[, meta,
    meta_sha256]}}, {hash: saved_triton's entry})."""
    try:
        used, triton_kernels = used_kernels(model)
    except Exception as e:  # the model cannot run at its bucket here: save what there is
        warnings.warn(f"save: running {model.source_graph.name} at its shape bucket to find its "
                      f"kernels failed ({type(e).__name__}: {e}); saved without kernels (loading "
                      "compiles them)", SavedKernelWarning, stacklevel=3)
        return {}, {}
    entries = {}
    kdir = d / KERNELS
    for name, kernel in sorted(used.items()):
        if kernel.path is None or not _KERNEL_NAME.fullmatch(name):
            continue
        src = Path(kernel.path)
        try:
            data = src.read_bytes()
        except OSError as e:
            warnings.warn(f"save: kernel file {src} is gone from the build cache ({e}); saved "
                          "without it (loading compiles it)", SavedKernelWarning, stacklevel=3)
            continue
        entry = {"family": kernel.family, "key": kernel.key, "sha256": _sha(data),
                 "bytes": len(data)}
        kdir.mkdir(exist_ok=True)
        _write_if_changed(kdir / name, data, entry["sha256"])
        meta = src.with_suffix(".json")
        if meta.is_file():
            mdata = meta.read_bytes()
            entry["meta"], entry["meta_sha256"] = meta.name, _sha(mdata)
            _write_if_changed(kdir / meta.name, mdata, entry["meta_sha256"])
        entries[name] = entry
    from ssmc.runtime.saved_triton import save_triton

    return entries, save_triton(triton_kernels, d, _write_if_changed)


def _write_if_changed(path: Path, data: bytes, sha: str) -> None:
    try:
        if path.is_file() and _sha(path.read_bytes()) == sha:
            return
    except OSError:
        pass
    _write_atomic(path, data)


def _remove_stale_kernels(d: Path, entries: dict) -> None:
    kdir = d / KERNELS
    if not kdir.is_dir():
        return
    keep = set(entries) | {e["meta"] for e in entries.values() if "meta" in e}
    for f in kdir.iterdir():
        if f.name not in keep and f.is_file():
            try:
                f.unlink()
            except OSError:
                pass
    if not entries:
        try:
            kdir.rmdir()
        except OSError:
            pass


def save(model, directory, *, kernels: bool = True) -> Path:
    """Write `model` (a CompiledModel) to `directory` (created if missing); kernels=False leaves
    the compiled kernels out (loading then finds them in the build cache or compiles them)."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    state = {k: v.detach().to("cpu") for k, v in model.state_dict().items()}
    torch.save(state, buf)
    blob = buf.getvalue()
    sha = hashlib.sha256(blob).hexdigest()
    weights = f"weights-{sha[:16]}.pt"
    graph = model.source_graph
    manifest = {
        "format": FORMAT,
        "name": graph.name,
        "spec": _spec_text(graph),
        "dims": dict(graph.dims),
        "dtype": graph.dtype,
        "bindings": dict(model.bindings),
        "target": model.target.name,
        "versions": versions(model.target),
        "nodes": node_plan(model),
        "weights": weights,
        "weights_sha256": sha,
    }
    _write_atomic(d / weights, blob)
    manifest["kernels"], manifest["triton_kernels"] = \
        _save_kernels(model, d) if kernels else ({}, {})
    _write_atomic(d / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True,
                                           default=str).encode())
    for old in d.glob("weights-*.pt"):
        if old.name != weights:
            try:
                old.unlink()
            except OSError:
                pass
    _remove_stale_kernels(d, manifest["kernels"])
    _remove_stale_triton(d, manifest["triton_kernels"])
    return d


def _remove_stale_triton(d: Path, entries: dict) -> None:
    from ssmc.runtime.saved_triton import TRITON

    tdir = d / TRITON
    if not tdir.is_dir():
        return
    for sub in tdir.iterdir():
        if sub.is_dir() and sub.name not in entries:
            shutil.rmtree(sub, ignore_errors=True)
    if not entries:
        shutil.rmtree(tdir, ignore_errors=True)


class _SavedPlan:
    """A records object (what the select_algorithm / schedule passes consult) that returns the
    saved choice for each node."""

    def __init__(self, nodes: dict):
        self.nodes = nodes

    def lookup(self, family, node, graph, ctx):
        entry = self.nodes.get(f"{graph.name}/{node.name}")
        if entry is None:
            return None
        return {"algorithm": entry["algorithm"], "config": dict(entry.get("config") or {}),
                "source": "saved model"}


def _differences(saved: dict, now: dict) -> list[str]:
    out = []
    for key in ("ssmc", "torch", "triton", "tvm"):
        if saved.get(key) != now.get(key):
            out.append(f"{key} {saved.get(key)} -> {now.get(key)}")
    st, nt = saved.get("target") or {}, now.get("target") or {}
    for key in ("name", "backend", "arch", "llvm_mcpu", "isa"):
        if st.get(key) != nt.get(key):
            out.append(f"target.{key} {st.get(key)} -> {nt.get(key)}")
    return out


def read_manifest(directory) -> dict:
    path = Path(directory) / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise SsmcError(f"load: no {MANIFEST} in {directory} (not a saved ssmc model)") from None
    except (OSError, json.JSONDecodeError) as e:
        raise SsmcError(f"load: cannot read {path}: {e}") from None
    if manifest.get("format") != FORMAT:
        raise SsmcError(f"load: {path} has format {manifest.get('format')!r}; this ssmc reads "
                        f"format {FORMAT}")
    return manifest


def register_kernels(directory, kernels: dict) -> list[str]:
    """Check a saved model's kernel files against the manifest's hashes and register the good
    ones as a read-only lookup place of the TVM build cache; the file names registered.  A
    missing or different file is reported (SavedKernelWarning) and left out: the build cache
    compiles that kernel on first use."""
    d = Path(directory)
    kdir = d / KERNELS
    good = {}
    for name, entry in kernels.items():
        problem = None
        if not _KERNEL_NAME.fullmatch(str(name)) or not isinstance(entry, dict) \
                or not isinstance(entry.get("sha256"), str):
            problem = "is not a kernel entry (<family>-<key>.so with a sha256)"
        else:
            try:
                data = (kdir / name).read_bytes()
            except FileNotFoundError:
                problem = "is missing"
            except OSError as e:
                problem = f"cannot be read ({e})"
            else:
                if _sha(data) != entry["sha256"]:
                    problem = (f"does not match its sha256 in {MANIFEST} (a partial or "
                               "corrupted copy?)")
        if problem:
            warnings.warn(f"ssmc.load({str(d)!r}): saved kernel {KERNELS}/{name} {problem}: not "
                          "used; that kernel is compiled again on first use",
                          SavedKernelWarning, stacklevel=3)
            continue
        good[name] = entry["sha256"]
    if good:
        from ssmc.codegen.tvm.build import DEFAULT_CACHE

        DEFAULT_CACHE.add_lookup(kdir, good, warning=SavedKernelWarning)
    return sorted(good)


def load(directory, target=None, *, device=None, on_mismatch: str = "rebuild"):
    """A CompiledModel from `save`'s directory.  target: None = the saved one (its descriptor
    on this machine); on_mismatch: 'rebuild' (warn and re-select kernels for this stack) or
    'error'."""
    from ssmc.ir.spec import load_spec
    from ssmc.runtime.compiled import CompiledModel
    from ssmc.targets import detect_host, load_target

    if on_mismatch not in ("rebuild", "error"):
        raise ValueError(f"on_mismatch: expected 'rebuild' or 'error', got {on_mismatch!r}")
    d = Path(directory)
    manifest = read_manifest(d)
    if target is None:
        try:
            tgt = load_target(manifest["target"])
        except SsmcError:
            tgt = detect_host()
    else:
        tgt = load_target(target) if isinstance(target, str) else target
    diffs = _differences(manifest.get("versions", {}), versions(tgt))
    kernels = manifest.get("kernels") or {}
    if diffs:
        msg = (f"ssmc.load({str(d)!r}): saved by another stack ({'; '.join(diffs)}); the saved "
               "kernel choices may not hold here")
        if on_mismatch == "error":
            raise VersionMismatchError(msg)
        unused = f"; the {len(kernels)} saved kernels are not used" if kernels else ""
        warnings.warn(msg + ": rebuilding (algorithms and configs re-selected for this stack; "
                      f"the weights are the saved ones{unused})", VersionMismatchWarning,
                      stacklevel=2)
        build = sys.modules.get("ssmc.codegen.tvm.build")
        if build is not None:  # registered by an earlier load of this directory
            build.DEFAULT_CACHE.remove_lookup(d / KERNELS)
    graph = load_spec(manifest["spec"], dims=manifest.get("dims"))
    graph.dtype = manifest.get("dtype", graph.dtype)
    records = None if diffs else _SavedPlan(manifest.get("nodes", {}))
    with torch.device(device or "cpu"):
        model = CompiledModel(graph, tgt, manifest.get("bindings"), records)
    if records is not None:  # keep the saved provenance of each choice
        for _, node, g in model.graph.walk():
            entry = manifest["nodes"].get(f"{g.name}/{node.name}")
            if entry is not None and "algorithm" in node.meta:
                node.meta["config_source"] = entry.get("config_source")
                node.meta["why"] = entry.get("why")
    wpath = d / manifest["weights"]
    blob = wpath.read_bytes()
    if hashlib.sha256(blob).hexdigest() != manifest.get("weights_sha256"):
        raise SsmcError(f"load: {wpath} does not match the hash in {MANIFEST} (a partial copy?)")
    state = torch.load(io.BytesIO(blob), map_location=device or "cpu", weights_only=True)
    model.load_state_dict(state)
    model.loaded_from = str(d)
    model.version_mismatch = diffs
    # the saved kernel files the build cache may load (none on a version mismatch)
    model.saved_kernels = register_kernels(d, kernels) if kernels and not diffs else []
    saved_triton = manifest.get("triton_kernels") or {}
    model.saved_triton_kernels = []
    if saved_triton and not diffs:
        from ssmc.runtime.saved_triton import install_triton

        installed, present = install_triton(d, saved_triton, SavedKernelWarning)
        model.saved_triton_kernels = sorted(installed + present)
    return model
