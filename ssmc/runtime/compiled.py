"""`ssmc.compile`: a spec -> a CompiledModel, an nn.Module with the reference model's parameter
names whose SSM nodes run the kernels the passes chose for the target."""

from __future__ import annotations

from pathlib import Path

import torch

from ssmc.ir.graph import Graph
from ssmc.passes import PassContext, run_pipeline
from ssmc.passes.select_algorithm import family
from ssmc.runtime import executors, gemm
from ssmc.runtime.dispatch import backend_of  # noqa: F401  (re-exported: ssmc.bench uses it)
from ssmc.semantics.model import GraphModule


class _Runner:
    """Runs a node with the kernel recorded in node.meta['run'] (kept on the node, so copies of
    the model keep their kernels); a plain object so nn.Module does not track it."""

    def __init__(self, backend: str):
        self.backend = backend

    def add(self, node) -> str:
        alg = node.meta.get("algorithm")
        hit = executors.for_node(family(node), alg, self.backend) if alg else None
        if hit is None:
            return "reference"
        node.meta["run"] = (hit[0], hit[1], node.meta.get("config", {}))
        executors.node_config(node, self.backend, node.meta["run"][2])
        epi = node.meta.get("epilogue")
        fused = f" + {epi.OP} '{epi.name}'" if epi is not None else ""
        return f"{self.backend}:{node.meta.get('kernel')}{fused}"

    def __call__(self, node, mod, args, epilogue=None):
        entry = node.meta.get("run")
        if entry is None:
            if epilogue is not None:
                return NotImplemented  # the reference runs the node and its epilogue
            return _cpu_glue(node, mod, args) if self.backend == "tvm" else NotImplemented
        executor, fn, config = entry
        ins = dict(zip(node.inputs, args))
        if epilogue is not None:
            ins["epilogue"] = epilogue
        return executor(node, mod, ins, fn, self.backend, config)


def _cpu_glue(node, mod, args):
    """Glue nodes on the CPU's faster paths (fp32 CPU tensors): a Linear on oneDNN
    (runtime/gemm.py; torch.compile traces F.linear), the causal depthwise conv and the rmsnorm
    on their TVM kernels (torch's depthwise conv1d took 6.7 ms for b2 c384 L1024 here, the
    kernel well under 1 ms).  With gradients or under torch.compile through their ops
    (ssmc::causal_conv1d / ssmc::rmsnorm and their backward kernels; benchmarks/RESULTS.md:
    conv fwd+bwd 9.6x, rmsnorm 2.4-2.9x the reference's autograd), else the kernels directly."""
    if node.OP not in ("linear", "conv1d", "rmsnorm"):
        return NotImplemented
    x = args[0]
    if x.dtype is not torch.float32 or mod.weight.dtype is not torch.float32 \
            or x.device.type != "cpu" or mod.weight.device.type != "cpu":
        return NotImplemented
    compiling = torch.compiler.is_compiling()
    if node.OP == "linear":
        return NotImplemented if compiling else gemm.linear(x, mod.weight, mod.bias)
    grad = torch.is_grad_enabled() and (x.requires_grad or mod.weight.requires_grad)
    if grad or compiling:
        if node.OP == "conv1d" and node.activation in ("silu", "identity"):
            from ssmc.codegen.composite.causal_conv_train import causal_conv1d_train

            return causal_conv1d_train(x, mod.weight, mod.bias, node.activation,
                                       config=_glue_config(node))
        if node.OP == "rmsnorm":
            from ssmc.codegen.composite.rmsnorm_train import rmsnorm_train

            return rmsnorm_train(x, mod.weight, mod.eps, groups=mod.groups)
        return NotImplemented
    from ssmc.codegen.tvm import decode

    if node.OP == "conv1d" and node.activation in ("silu", "identity"):
        return decode.causal_conv1d(x, mod.weight, mod.bias,
                                    "silu" if node.activation == "silu" else None,
                                    config=_glue_config(node))
    if node.OP == "rmsnorm":
        return decode.rmsnorm(x, mod.weight, mod.eps, groups=mod.groups,
                              config=_glue_config(node))
    return NotImplemented


def _glue_config(node):
    """The kernel config of a glue node (the schedule pass's node.meta['config']: a tuned
    record's, or {} = the kernel's defaults), made once and kept on the node."""
    cfg = node.meta.get("glue_run", False)
    if cfg is False:
        cfg = node.meta["glue_run"] = executors.tvm_glue_config(node.OP, node.meta.get("config"))
    return cfg


class CompiledModel(GraphModule):
    """The lowered graph run with compiled kernels where the target has them; the reference
    elsewhere.  Gradients go through the ssmc:: ops (ssmc.runtime.library) where a node runs
    them, else through the node's own differentiable path or the reference."""

    def __init__(self, graph: Graph, target, bindings: dict | None = None, records=None):
        ctx = PassContext(target=target, bindings=dict(bindings or {"batch": 2, "seqlen": 1024}),
                          records=records, dtype=graph.dtype)
        lowered = run_pipeline(graph, ctx)
        runner = _Runner(backend_of(target))
        self.kernels = {}
        for qname, node, _ in lowered.walk():
            if node.ALGORITHMS and node.OP != "conv":
                self.kernels[qname] = runner.add(node)
        super().__init__(lowered, runner)
        self.source_graph = graph
        self.target = target
        self.bindings = ctx.bindings
        if graph.dtype != "float32":
            # The parameters too, not only the io dtype the passes pick kernels for: else
            # compile(dtype=torch.bfloat16) would choose bf16 kernels and run fp32.  ssmc.load
            # comes through here with the saved dtype, so its weights load without a cast.
            self.to(getattr(torch, graph.dtype))

    def save(self, directory, *, kernels: bool = True):
        """Write the spec, weights, chosen algorithms/configs, stack versions and (unless
        kernels=False) the compiled CPU kernels to `directory` (atomically); `ssmc.load(directory)`
        brings the model back without recompiling."""
        from ssmc.runtime.saveload import save

        return save(self, directory, kernels=kernels)

    def summary(self) -> str:
        lines = [f"{self.graph.name} compiled for {self.target.name}:"]
        for qname, how in self.kernels.items():
            lines.append(f"  {qname:<24} {how}")
        return "\n".join(lines)


def compile(spec_or_path, target="auto", dtype=None, *, seqlen: int = 1024, batch: int = 2,
            records=None, device=None, dims: dict | None = None) -> CompiledModel:
    """Compile a spec (path, YAML text or Graph) for a target ('auto' = this host).  The shape
    bucket is (batch, seqlen) plus `dims`, the values of the spec's other run-time dims.
    records: tuned records (ssmc.tune.Records); None = the target's defaults, False = none.
    dtype: the model's dtype (parameters and kernels; None = the spec's, float32 by default)."""
    from ssmc.ir.spec import load_spec
    from ssmc.targets import detect_host, load_target

    graph = spec_or_path if isinstance(spec_or_path, Graph) else load_spec(
        Path(spec_or_path) if isinstance(spec_or_path, Path) else spec_or_path)
    if dtype is not None:
        graph.dtype = str(dtype).replace("torch.", "")
    tgt = detect_host() if target == "auto" else (load_target(target) if isinstance(target, str) else target)
    if records is None:  # the tuned records for the target (user dir, then schedules/<target>/)
        from ssmc.tune.records import default_records

        records = default_records(tgt)
    records = records or None  # False: no records at all
    with torch.device(device or "cpu"):
        return CompiledModel(graph, tgt, {"batch": batch, "seqlen": seqlen, **(dims or {})}, records)
