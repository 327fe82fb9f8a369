"""What is benchmarked: a subject (one op, or one whole model spec) and its implementations.

A `Recipe` names a subject completely with plain values, so that a child process can rebuild the
same thing (the torch.compile baseline runs in one, under a time cap: see isolate.py).  A subject
hands out `Impl`s; an Impl builds, for one sequence length, a zero-argument call that runs one
forward pass (or forward + backward) on inputs made beforehand, so the timed region holds the
computation only.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from ssmc.errors import SsmcError

OPS = ("selective_scan", "ssd")

# Baselines a user may ask for (--baselines).  ssmc itself always runs: it is what the others are
# compared with.
BASELINES = {
    "eager": "PyTorch eager: the reference (sequential Python loop for the ops, the reference "
             "model for specs)",
    "compile": "torch.compile: of an associative-scan formulation for selective_scan (a Python "
               "loop over L does not compile), of the chunked form for ssd, of the reference "
               "model for specs; in a child process under --compile-timeout",
    "assoc": "the associative/chunked formulation run eagerly (ops only)",
    "mamba_ssm": "mamba-ssm's kernels (optional peer; CUDA only)",
    "fla": "flash-linear-attention's kernels (optional peer; GPU only; ssd)",
}
DEFAULT_BASELINES = ("eager", "compile")


class Unavailable(Exception):
    """An implementation that cannot run here (a missing optional package, no GPU, no backward
    kernel); the harness records the reason and goes on."""


@dataclass(frozen=True)
class Recipe:
    subject: str  # an op name from OPS, or a spec path
    target: str = "cpu"
    batch: int = 2
    dtype: str = "float32"
    backward: bool = False
    dims: dict = field(default_factory=dict)  # the op's sizes, or the spec's run-time dims
    seed: int = 0

    @property
    def is_op(self) -> bool:
        return self.subject in OPS

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class Impl:
    name: str  # ssmc | eager | compile | assoc | mamba_ssm | fla
    label: str  # what exactly runs, for the table and the plot legend
    build: Callable[[int], Callable[[], object]]  # seqlen -> one timed call
    isolated: bool = False  # run in a child process with a compile-time cap
    note: str = ""


def torch_dtype(name: str):
    import torch

    table = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
    if name not in table:
        raise SsmcError(f"--dtype: expected one of {', '.join(table)}, got {name!r}")
    return table[name]


def device_for(target) -> str:
    """Where tensors live for a target: a GPU target needs a GPU here."""
    import torch

    if not target.is_gpu:
        return "cpu"
    if not torch.cuda.is_available():
        raise SsmcError(f"target {target.name} is a GPU target and this machine has no GPU "
                        "(use --target cpu)")
    return "cuda"


def sync_for(device: str):
    import torch

    return torch.cuda.synchronize if device == "cuda" else None


def timed_pass(fn: Callable[[], object], leaves: list, backward: bool) -> Callable[[], object]:
    """The zero-argument call the harness times: fn() under no_grad for a forward pass; with
    `backward`, fn() then backward from a fixed output gradient, the leaves' grads cleared first
    so that each call does the same work."""
    import torch

    if not backward:
        def forward():
            with torch.no_grad():
                return fn()
        return forward

    grad_out = {}

    def forward_backward():
        for t in leaves:
            t.grad = None
        out = fn()
        out = out[0] if isinstance(out, tuple) else out
        if "g" not in grad_out:  # made once, outside the later timed calls
            grad_out["g"] = torch.ones_like(out)
        out.backward(grad_out["g"])
        return out

    return forward_backward


def make_subject(recipe: Recipe):
    """The op or model subject a recipe names; an unknown op or a missing spec is an SsmcError."""
    from ssmc.errors import did_you_mean

    if recipe.is_op:
        from ssmc.bench.op_cases import OP_SUBJECTS

        return OP_SUBJECTS[recipe.subject](recipe)
    path = Path(recipe.subject)
    if not path.is_file():
        hint = did_you_mean(recipe.subject, OPS)
        raise SsmcError(f"{recipe.subject!r} is neither an op ({', '.join(OPS)}) nor a spec file"
                        + (f" (did you mean '{hint}'?)" if hint else ""))
    from ssmc.bench.model_cases import ModelSubject

    return ModelSubject(recipe)
