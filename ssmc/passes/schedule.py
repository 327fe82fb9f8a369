"""schedule: the kernel knobs (tiles, chunk, warps, stages, channel block, vector width) of each
SSM node: a tuned record's config when there is one, else the kernel family's defaults for the
target.  The same for the glue nodes a CPU target runs on kernels of their own (the causal
conv1d and the rmsnorm, runtime.compiled._cpu_glue): their record's config, else {} (the
kernel's own defaults)."""

from __future__ import annotations

import warnings

from ssmc.passes.rewrite import all_graphs
from ssmc.passes.select_algorithm import family

# Glue ops that a TVM CPU target runs on a tunable TVM kernel at inference (fp32, a (b, L, c)
# input; runtime.compiled._cpu_glue): op -> the kernel's name, which stands where an SSM node's
# algorithm does (in records, search spaces and `kernel`).
GLUE_KERNELS = {"conv1d": "window", "rmsnorm": "rowwise"}
# Node families whose TVM kernels have knobs of their own (Ssm2dConfig, PlrnnConfig,
# DiagonalScanConfig; spaces tvm_ssm2d / tvm_plrnn / tvm_diagonal_scan): their default config
# is {} (the kernel's host default) and only a record names their knobs.
TVM_OWN_DEFAULTS = ("ssm2d", "recurrence", "diagonal_ssm")


def glue_kernel(node, graph, target, dtype: str) -> str | None:
    """The tunable kernel that runs glue node `node` on `target`, None when it has none there."""
    alg = GLUE_KERNELS.get(node.OP)
    if alg is None or target is None or getattr(target, "backend", "") != "tvm-llvm" \
            or dtype != "float32":
        return None
    if node.OP == "conv1d" and node.activation not in ("silu", "identity"):
        return None
    x = node.inputs.get("x")
    t = graph.types.get(x) if x is not None else None
    return alg if t is not None and t.rank == 3 else None


def default_config(fam: str, algorithm: str, target) -> dict:
    """Per-target defaults; kept small and explicit so the tuner has an obvious starting point."""
    if target.backend.startswith("tvm"):
        if fam in TVM_OWN_DEFAULTS:
            return {}
        cfg = {"channel_block": 16, "vector_width": 16, "threads": target.units, "layout": "bld"}
        if fam == "selective_ssm/ssd":
            # the p x n state of a head does not fit in registers anyway: wider blocks amortise
            # B/C broadcasts (measurements in ssmc.codegen.tvm.config.default_ssd_config)
            cfg["channel_block"] = 64
        return cfg
    if fam == "diagonal_ssm":
        # the S4D kernels' own defaults, which `ssmc compile` builds ahead of time: the
        # recurrence sizes its channel block by d_state (BLOCK_D 32 with N = 64 complex states
        # takes all 255 registers of an sm_90 thread); the Vandermonde kernel tiles (d, L)
        if algorithm == "fft":
            return {"BLOCK_D": 16, "BLOCK_L": 64, "num_warps": 4, "num_stages": 1}
        return {"num_warps": 4, "num_stages": 1}
    if fam in ("recurrence", "selective_ssm/dense"):
        # the PLRNN / dense scan kernels size their tiles and warps from the problem
        # (trajectories / blocks per program, registers): only what does not depend on it
        return {"num_stages": 1}
    if fam == "ssm2d":
        # the wavefront kernel's own defaults (block_d 4), which `ssmc compile` builds ahead of
        # time spill-free; the generic BLOCK_D 32 below spilled 92 bytes on sm_90 (found by
        # `ssmc tune ir/chimera.yaml --target sm_90`)
        return {"num_stages": 1}
    cfg = {"BLOCK_D": 32, "num_warps": 4, "num_stages": 2}
    if algorithm == "chunked":
        cfg["CHUNK"] = 64
    if algorithm == "associative":
        cfg["BLOCK_L"] = 256
    return cfg


def run(graph, ctx):
    for g in all_graphs(graph):
        for node in g.nodes:
            alg = node.meta.get("algorithm")
            if alg is None:
                _glue(g, node, ctx)
                continue
            fam = family(node)
            record = ctx.records.lookup(fam, node, g, ctx) if ctx.records is not None else None
            if _usable(record, fam, alg, ctx.target):
                node.meta["config"], node.meta["config_source"] = dict(record["config"]), "record"
            else:
                node.meta["config"] = default_config(fam, alg, ctx.target)
                node.meta["config_source"] = "default"
            node.meta["kernel"] = f"{fam}/{alg}"
    return graph


def _glue(g, node, ctx) -> None:
    alg = glue_kernel(node, g, ctx.target, ctx.dtype)
    if alg is None:
        return
    fam = family(node)
    record = ctx.records.lookup(fam, node, g, ctx) if ctx.records is not None else None
    if _usable(record, fam, alg, ctx.target):
        node.meta["config"], node.meta["config_source"] = dict(record["config"]), "record"
    else:
        node.meta["config"], node.meta["config_source"] = {}, "default"
    node.meta["kernel"] = f"{fam}/{alg}"


def _usable(record, fam: str, alg: str, target) -> bool:
    """Whether a tuned record holds a config for this algorithm that its kernel can take.  A
    record edited by hand or written by another ssmc may not: it is then ignored, with a
    warning naming its file, and the node keeps its defaults (the model still compiles)."""
    if not (record and record.get("algorithm") == alg and record.get("config")):
        return False
    from ssmc.runtime.dispatch import backend_of  # here: the runtime imports torch
    from ssmc.runtime.executors import config_problem

    problem = config_problem(fam, alg, backend_of(target), record["config"])
    if problem is not None:
        warnings.warn(f"ssmc: ignoring the tuned record {record.get('path', '?')}: its config "
                      f"does not fit the {fam}/{alg} kernel ({problem}); using the defaults",
                      stacklevel=2)
        return False
    return True
