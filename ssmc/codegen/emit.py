"""`ssmc compile`: write every kernel a lowered graph needs for a target to a directory: the
source, and for GPU targets the ahead-of-time artifacts (ptx/cubin or amdgcn/hsaco) with their
register / shared-memory / spill metadata, plus manifest.json saying which node runs what."""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path

from ssmc.codegen.composite import emit_tvm as composite_tvm
from ssmc.passes.select_algorithm import family

# (node family, algorithm) -> the Triton kernel family that implements it
TRITON_FAMILY = {
    ("selective_ssm/mamba1", "sequential"): "selective_scan.sequential",
    ("selective_ssm/mamba1", "associative"): "selective_scan.associative",
    ("selective_ssm/mamba1", "chunked"): "selective_scan.chunked",
    ("selective_ssm/ssd", "chunked"): "ssd.chunked",
    ("diagonal_ssm", "sequential"): "s4d.recurrent",
    ("diagonal_ssm", "fft"): "s4d.vandermonde",
    ("ssm2d", "wavefront"): "ssm2d.wavefront",
    ("recurrence", "sequential"): "plrnn.sequential",
    ("selective_ssm/dense", "sequential"): "dense.sequential",
}
# (node family, algorithm) -> the Triton family of its backward, the kernel training launches
# (SSD's is the Mamba-1 backward kernel in its SSD mode; S4D's FFT path differentiates its
# Vandermonde kernel).  The selective scans' takes real A only: complex A trains on the torch
# reverse scan.
TRITON_BACKWARD = {
    ("selective_ssm/mamba1", "sequential"): "selective_scan.backward",
    ("selective_ssm/mamba1", "associative"): "selective_scan.backward",
    ("selective_ssm/mamba1", "chunked"): "selective_scan.backward",
    ("selective_ssm/ssd", "chunked"): "ssd.backward",
    ("diagonal_ssm", "fft"): "s4d.vandermonde_bwd",
    ("ssm2d", "wavefront"): "ssm2d.backward",
    ("recurrence", "sequential"): "plrnn.backward",
    ("selective_ssm/dense", "sequential"): "dense.backward",
}
REAL_A_BACKWARD = ("selective_ssm/mamba1", "selective_ssm/ssd")
TORCH_DTYPE = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}


def _write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def _strict_json(obj):
    """JSON has no Infinity/NaN: Python writes them, strict readers (JavaScript, many tools)
    reject the file.  Non-finite floats (a signature's dt_max = inf) become 'inf' / 'nan'."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if isinstance(obj, dict):
        return {k: _strict_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_strict_json(v) for v in obj]
    return obj


def _mamba1_signature(node, graph):
    from ssmc.codegen.tvm import ScanSignature
    from ssmc.ir import dims as D

    d = D.as_int(graph.types[node.inputs["x"]].shape[-1], {})
    return ScanSignature(d=d, N=node.d_state, b_groups=node.groups, c_groups=node.groups,
                         complex_a=node.complex, has_D=node.D, has_z="z" in node.inputs,
                         has_delta_bias=node.delta_bias, delta_softplus=node.delta_softplus,
                         has_initial_state="initial_state" in node.inputs,
                         return_last_state=node.final_state, conj_pair=node.conj_pair)


def _emit_tvm(node, graph, target, out: Path) -> dict:
    """TIR of the CPU kernel (and the LLVM module it builds to), or CUDA C for a GPU target."""
    from ssmc.codegen.tvm import selective_scan_tir as tirb
    from ssmc.codegen.tvm.config import default_config

    sig = _mamba1_signature(node, graph)
    files = {}
    if target.is_gpu:
        from ssmc.codegen.tvm import selective_scan_cuda_source

        if target.backend != "triton-cuda":
            return {"note": "TVM's second path emits CUDA only"}
        p = out / "selective_scan.cu"
        _write_atomic(p, selective_scan_cuda_source(sig, arch=target.arch))
        files["cuda"] = str(p)
    else:
        prim = tirb.build_selective_scan(sig, default_config("llvm"), "llvm")
        p = out / "selective_scan.tir.py"
        _write_atomic(p, prim.script() if hasattr(prim, "script") else str(prim))
        files["tir"] = str(p)
    return {"files": files, "signature": sig.__dict__}


def emit(lowered, target, out_dir, dtype: str = "float32") -> dict:
    """Write the kernels of `lowered` (a graph after the pass pipeline) to out_dir."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest = {"model": lowered.name, "target": target.name, "backend": target.backend, "nodes": []}
    done = {}
    for qname, node, graph in lowered.walk():
        alg = node.meta.get("algorithm")
        if alg is None:
            continue
        fam = family(node)
        entry = {"node": qname, "family": fam, "algorithm": alg, "backend": target.backend,
                 "config": node.meta.get("config"), "why": node.meta.get("why")}
        node_dir = out_dir / qname.replace("*", "all").replace(".", "_")
        if target.is_gpu and (fam, alg) in TRITON_FAMILY:
            tfam = TRITON_FAMILY[(fam, alg)]
            bfam = TRITON_BACKWARD.get((fam, alg))
            if fam in REAL_A_BACKWARD and getattr(node, "complex", False):
                bfam = None
            todo = [f for f in (tfam, bfam) if f is not None and f not in done]
            if todo:
                from ssmc.codegen.triton.aot import compile_families

                kernels = compile_families(todo, [target], dtype=TORCH_DTYPE.get(dtype, "fp32"),
                                           out_dir=out_dir / "triton")
                for f in todo:
                    done[f] = [k.as_dict() for k in kernels if k.family == f]
            entry["triton"] = {"family": tfam, "kernels": done[tfam]}
            if bfam is not None:
                entry["triton_backward"] = {"family": bfam, "kernels": done[bfam]}
        elif not target.is_gpu and fam == "selective_ssm/mamba1":
            node_dir.mkdir(parents=True, exist_ok=True)
            entry["tvm"] = _emit_tvm(node, graph, target, node_dir)
        elif not target.is_gpu and fam in ("ssm2d", "recurrence"):
            from ssmc.codegen.ssm2d_recurrence import emit_tvm as grid_tvm

            node_dir.mkdir(parents=True, exist_ok=True)
            entry["tvm"] = grid_tvm(node, graph, fam, alg, node_dir, _write_atomic)
        elif composite_tvm.handles(fam, alg, target):
            node_dir.mkdir(parents=True, exist_ok=True)
            entry["tvm" if not target.is_gpu else "composite"] = composite_tvm.emit(
                node, graph, fam, alg, node_dir, _write_atomic, target)
        else:
            entry["runs"] = "eager reference (no kernel for this family/algorithm on this target yet)"
        if target.is_gpu and fam == "selective_ssm/mamba1" and target.backend == "triton-cuda":
            node_dir.mkdir(parents=True, exist_ok=True)
            entry["tvm_cuda"] = _emit_tvm(node, graph, target, node_dir)
        manifest["nodes"].append(entry)
    _write_atomic(out_dir / "manifest.json",
                  json.dumps(_strict_json(manifest), indent=2, default=str, allow_nan=False))
    return manifest
