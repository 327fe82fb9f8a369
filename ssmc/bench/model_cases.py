"""The model subject: a whole spec, compiled by ssmc against its eager reference model and
torch.compile of that reference.

The compiled model runs kernels only for the SSM nodes the target has kernels for; the rest of
the graph (and every SSM node without a kernel) runs the same eager PyTorch as the reference, so
a model whose SSM nodes all fall back measures about 1x.  The Impl label says which it is.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

from ssmc import costmodel as cm
from ssmc.bench.roofline import linear_work, roofline
from ssmc.bench.subject import Impl, device_for, sync_for, timed_pass, torch_dtype
from ssmc.errors import SsmcError


def _int(x, bindings: dict) -> int:
    from ssmc.ir import dims as D

    return int(x) if isinstance(x, int) else D.as_int(x, bindings)


def model_works(lowered, bindings: dict) -> list:
    """One cost-model Work per kernel a forward pass runs: each SSM node with the algorithm the
    compiler chose, and each dense layer (a matmul no implementation can avoid).  Elementwise
    glue is left out: a fusing compiler need not pay for it, so the roofline stays a bound."""
    from ssmc.passes.rewrite import concrete

    works = []

    def visit(g, times: int):
        for node in g.topo_nodes():
            if node.OP == "repeat":
                visit(node.body, times * _int(node.times, bindings))
            elif node.meta.get("algorithm") and node.meta.get("costs"):
                row = next(r for r in node.meta["costs"]
                           if r["algorithm"] == node.meta["algorithm"])
                works.extend([cm.Work(**{k: row[k] for k in cm.Work.__dataclass_fields__})] * times)
            elif node.OP == "linear":
                shape = concrete(g, node.inputs["x"], bindings)
                rows = math.prod(shape[:-1])
                works.extend([linear_work(rows, shape[-1], _int(node.out, bindings))] * times)

    visit(lowered, 1)
    return works


class ModelSubject:
    def __init__(self, recipe):
        from ssmc.ir.spec import load_spec
        from ssmc.semantics.inputs import bind_shape
        from ssmc.targets import load_target

        self.recipe = recipe
        self.path = Path(recipe.subject)
        self.graph = load_spec(self.path)
        self.name = self.graph.name
        self.target = load_target(recipe.target)
        self.device = device_for(self.target)
        self.sync = sync_for(self.device)
        self.dtype = torch_dtype(recipe.dtype)
        for name, t in self.graph.inputs.items():  # an unbound run-time dim fails here, once
            bind_shape(t.shape, self.bindings(1), f"input '{name}'")
        self.kernels = None  # node -> how it runs, filled when ssmc's Impl is first built

    def bindings(self, L: int) -> dict:
        return {"batch": self.recipe.batch, "seqlen": L, **self.recipe.dims}

    def describe(self) -> str:
        dims = "".join(f" {k}={v}" for k, v in self.recipe.dims.items())
        return f"{self.name} ({self.path}) batch={self.recipe.batch}{dims} {self.recipe.dtype}"

    def inputs(self, L: int) -> dict:
        from ssmc.semantics.inputs import random_inputs

        return random_inputs(self.graph, self.bindings(L), seed=self.recipe.seed,
                             device=self.device, dtype=self.dtype)

    def reference(self):
        import torch

        from ssmc.semantics.model import build_reference

        torch.manual_seed(self.recipe.seed)
        model = build_reference(self.graph, device=self.device).to(self.dtype)
        return model.train(self.recipe.backward)

    def _call(self, model, L: int):
        ins = self.inputs(L)
        leaves = [p for p in model.parameters() if p.requires_grad] if self.recipe.backward else []
        return timed_pass(lambda: model(**ins), leaves, self.recipe.backward)

    # ---- implementations ---------------------------------------------------------------------

    def _ssmc_plan(self) -> dict:
        """node -> 'tvm:...' or 'reference', from lowering at a small length (cheap: kernels are
        built on the first call, not here)."""
        if self.kernels is None:
            import ssmc

            model = ssmc.compile(self.path, target=self.target, dtype=self.recipe.dtype,
                                 seqlen=64, batch=self.recipe.batch, dims=self.recipe.dims,
                                 device=self.device)
            self.kernels = dict(model.kernels)
        return self.kernels

    def ssmc_label(self) -> tuple:
        plan = self._ssmc_plan()
        how = ", ".join(f"{k}: {v}" for k, v in plan.items()) or "no SSM nodes"
        notes = []
        if plan and all(v == "reference" for v in plan.values()):
            notes.append("every SSM node runs the eager reference on this target: ~1x expected")
        if self.recipe.backward:
            notes.append("backward through ssmc's autograd ops (ssmc.runtime.library) where a "
                         "node has a kernel, the reference elsewhere")
        return f"ssmc ({how})", "; ".join(notes)

    def impls(self, baselines) -> list:
        from ssmc.bench import peers

        label, note = self.ssmc_label()
        out = [Impl("ssmc", label, self._build_ssmc, note=note)]
        for name in baselines:
            if name == "eager":
                out.append(Impl("eager", "eager reference model",
                                lambda L: self._call(self.reference(), L)))
            elif name == "compile":
                out.append(Impl("compile", "torch.compile(reference model)", self._build_compiled,
                                isolated=True))
            else:  # assoc and the peers are op-level baselines
                out.append(peers.unavailable_impl(name, f"'{name}' is an op baseline; a spec "
                                                        "runs ssmc, eager and compile only"))
        return out

    def _build_ssmc(self, L: int):
        import ssmc

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = ssmc.compile(self.path, target=self.target, dtype=self.recipe.dtype, seqlen=L,
                                 batch=self.recipe.batch, dims=self.recipe.dims,
                                 device=self.device)
        model.load_state_dict(self.reference().state_dict())  # same weights as the reference
        model.train(self.recipe.backward)
        return self._call(model, L)

    def _build_compiled(self, L: int):
        import torch

        return self._call(torch.compile(self.reference()), L)

    # ---- roofline ----------------------------------------------------------------------------

    def roofline(self, L: int):
        if self.recipe.backward:
            return None
        from ssmc.passes import PassContext, run_pipeline

        ctx = PassContext(target=self.target, bindings=self.bindings(L), dtype=self.graph.dtype)
        try:
            lowered = run_pipeline(self.graph, ctx)
            return roofline(model_works(lowered, self.bindings(L)), self.target)
        except SsmcError:
            raise
        except Exception:  # a node the cost model cannot size: no roofline rather than no run
            return None

