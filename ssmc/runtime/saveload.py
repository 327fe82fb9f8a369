"""Saving a CompiledModel to a directory and loading it back.

The directory holds:

  manifest.json       format version, the spec text and its resolved dims, the dtype, the shape
                      bucket, the target, the versions of the stack (ssmc, torch, triton, tvm,
                      target), and per SSM node the chosen algorithm and kernel config (with
                      where they came from: cost model, tuned record, spec);
  weights-<sha>.pt    the state dict (torch.save), named by its content hash.

Writes are atomic: the weights go to a temporary file that is renamed into place, then the
manifest (which names the weights file and its hash) is written the same way; a reader sees the
old model or the new one, never half of one.  Older weights files are removed after.

Loading rebuilds the module from the spec and forces the saved algorithm and config on every
node, so the kernels are the same ones: the TVM build cache is keyed by the kernel config, so a
kernel built before (by this process or any other) is loaded from disk, not compiled again.
When the saved versions differ from this process's (another ssmc, torch, triton, tvm or target),
the saved choices may not hold here: `load` says which versions differ (a
`VersionMismatchWarning`) and rebuilds, re-selecting algorithms and configs for this stack;
`on_mismatch="error"` raises instead.  Either way the weights are the saved ones.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
import warnings
from importlib import metadata
from pathlib import Path

import torch

import ssmc
from ssmc.errors import SsmcError

FORMAT = 1
MANIFEST = "manifest.json"


class VersionMismatchWarning(UserWarning):
    """The saved model was compiled by another stack: it was rebuilt for this one."""


class VersionMismatchError(SsmcError):
    pass


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
    """Per SSM node of the lowered graph: the algorithm and config that run it."""
    plan = {}
    for qname, node, g in model.graph.walk():
        meta = node.meta
        if "algorithm" not in meta:
            continue
        plan[f"{g.name}/{node.name}"] = {
            "qname": qname, "algorithm": meta["algorithm"], "config": meta.get("config") or {},
            "config_source": meta.get("config_source"), "why": meta.get("why"),
            "kernel": model.kernels.get(qname, "reference"),
        }
    return plan


def save(model, directory) -> Path:
    """Write `model` (a CompiledModel) to `directory` (created if missing)."""
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
    _write_atomic(d / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True,
                                           default=str).encode())
    for old in d.glob("weights-*.pt"):
        if old.name != weights:
            try:
                old.unlink()
            except OSError:
                pass
    return d


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
    if diffs:
        msg = (f"ssmc.load({str(d)!r}): saved by another stack ({'; '.join(diffs)}); the saved "
               "kernel choices may not hold here")
        if on_mismatch == "error":
            raise VersionMismatchError(msg)
        warnings.warn(msg + ": rebuilding (algorithms and configs re-selected for this stack; "
                      "the weights are the saved ones)", VersionMismatchWarning, stacklevel=2)
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
    return model
