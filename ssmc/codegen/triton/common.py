"""What every Triton kernel family shares.

* Argument checks that raise ValueError naming the offending argument.
* The launch plan: a family's launcher first builds a list of `KernelLaunch`es (kernel, grid,
  arguments, constexprs, warps, stages) and only then runs them.  The same plan, built from
  `meta` tensors, is what `aot.py` compiles for a target without a GPU, so the signature the AOT
  compile sees is by construction the one a real launch uses.
* `KernelConfig`, the base of every family's knob dataclass (what a tuner overrides).
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass, field, fields
from typing import Any

import torch
import triton

from ssmc.errors import did_you_mean

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

# Triton's pointer type names, as an AOT signature spells them.
TRITON_POINTER_TYPE = {
    torch.float32: "*fp32",
    torch.float16: "*fp16",
    torch.bfloat16: "*bf16",
    torch.int32: "*i32",
    torch.int64: "*i64",
}


def interpreting() -> bool:
    """True when kernels run through Triton's CPU interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def next_pow2(n: int) -> int:
    return triton.next_power_of_2(max(int(n), 1))


# --------------------------------------------------------------------------- argument checks

def check_tensor(name: str, t, *, dims: tuple | None = None, dtypes=None, optional=False):
    """Check that `t` is a tensor with the given labelled dims, e.g.
    dims=(("batch", 2), ("dim", 5), ("seqlen", None)); None matches any size."""
    if t is None:
        if optional:
            return None
        raise ValueError(f"{name}: required, got None")
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if dims is not None:
        want = ", ".join(f"{label}={'?' if size is None else size}" for label, size in dims)
        ok = t.dim() == len(dims) and all(
            size is None or t.shape[i] == size for i, (_, size) in enumerate(dims))
        if not ok:
            raise ValueError(f"{name}: expected shape ({want}), got {tuple(t.shape)}")
    if dtypes is not None and t.dtype not in dtypes:
        names = ", ".join(str(d).replace("torch.", "") for d in dtypes)
        raise ValueError(f"{name}: dtype {str(t.dtype).replace('torch.', '')} not supported "
                         f"(expected one of {names})")
    return t


def check_same_device(reference_name: str, reference: torch.Tensor, **tensors):
    """All tensors on the reference's device, and that device one Triton can run on (a GPU, the
    CPU under TRITON_INTERPRET=1, or `meta` when only a plan is built)."""
    dev = reference.device
    for name, t in tensors.items():
        if t is not None and t.device != dev:
            raise ValueError(f"{name}: on {t.device}, but {reference_name} is on {dev}")
    if dev.type == "cpu" and not interpreting():
        raise ValueError(f"{reference_name}: a CPU tensor; Triton kernels need a CUDA/ROCm "
                         "tensor (or TRITON_INTERPRET=1 to run them through the interpreter)")


def check_flag(name: str, value):
    if not isinstance(value, bool):
        raise ValueError(f"{name}: expected a bool, got {value!r}")
    return value


# --------------------------------------------------------------------------- knobs

def pow2_field(default: int | None):
    """A knob that must be a power of two (Triton block shapes and warp counts are); None means
    "chosen from the problem" where the family allows it."""
    return field(default=default, metadata={"pow2": True})


def auto_block_d(values_per_channel: int, num_warps: int, per_thread: int = 4,
                 largest: int = 64) -> int:
    """Channels per program so that each thread holds about `per_thread` state values: enough
    independent work per thread without running out of registers (N = 64 complex states at
    32 channels took all 255 registers of an sm_90 thread)."""
    threads = 32 * num_warps
    block = max(1, (per_thread * threads) // max(values_per_channel, 1))
    return min(largest, 1 << (block.bit_length() - 1))


@dataclass(frozen=True)
class KernelConfig:
    """Base of every family's Config: launch knobs that never change the values computed."""

    num_warps: int = pow2_field(4)
    num_stages: int = 1

    def __post_init__(self):
        for f in fields(self):
            value = getattr(self, f.name)
            if f.metadata.get("pow2"):
                if value is None and f.default is None:
                    continue
                if not isinstance(value, int) or value < 1 or value & (value - 1):
                    raise ValueError(f"{f.name}: must be a power of two, got {value!r}")
            elif f.type in ("int", int) and (not isinstance(value, int) or value < 1):
                raise ValueError(f"{f.name}: must be a positive int, got {value!r}")

    @classmethod
    def from_dict(cls, knobs: dict):
        """Build from a tuner's dict; an unknown knob is an error that names the closest one."""
        names = [f.name for f in fields(cls)]
        for key in knobs:
            if key not in names:
                hint = did_you_mean(key, names)
                raise ValueError(f"{key}: not a knob of {cls.__name__}"
                                 + (f" (did you mean '{hint}'?)" if hint else ""))
        return cls(**knobs)

    def as_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


# --------------------------------------------------------------------------- launch plans

@dataclass
class KernelLaunch:
    """One kernel launch, described before it happens."""

    kernel: Any  # a triton JITFunction (an InterpretedFunction under TRITON_INTERPRET=1)
    grid: tuple
    args: dict  # runtime arguments, in the kernel's parameter order
    constexprs: dict
    num_warps: int = 4
    num_stages: int = 1

    @property
    def name(self) -> str:
        fn = getattr(self.kernel, "fn", self.kernel)
        return fn.__name__

    def run(self, traceable: bool = False):
        """Launch it.  traceable: through torch.library.wrap_triton, so that torch.compile
        sees the kernel inside a triton_op (the interpreter's kernels are not JITFunctions and
        run as they are)."""
        if interpreting() and _any_fake(self.args.values()):
            return  # tracing a triton_op under the interpreter: shapes only, nothing to run
        for seen in _RECORDERS:
            seen.add(self.kernel)
        kernel = self.kernel
        if traceable and not interpreting():
            from torch.library import wrap_triton

            kernel = wrap_triton(kernel)
        kernel[self.grid](**self.args, **self.constexprs,
                          num_warps=self.num_warps, num_stages=self.num_stages)


def _any_fake(values) -> bool:
    """Whether a launch's arguments are fake tensors (torch.compile / opcheck tracing a
    triton_op): wrap_triton records such a launch on a device; the interpreter would read
    their (absent) data."""
    from torch._subclasses.fake_tensor import is_fake

    return any(isinstance(v, torch.Tensor) and (v.device.type == "meta" or is_fake(v))
               for v in values)


@torch.compiler.assume_constant_result
def config_json(config) -> str:
    """A kernel config's knobs (anything with as_dict(): a Triton KernelConfig, a TVM Config) as
    an op's JSON string ('' for None): a constant to torch.compile (its trace cannot run json
    or build the frozen dataclasses)."""
    return json.dumps(config.as_dict()) if config is not None else ""


def run_traceable(plan: "LaunchPlan") -> tuple:
    """Run a plan's launches through wrap_triton (inside a triton_op: torch.compile sees the
    kernels) and return its outputs."""
    for launch in plan.launches:
        launch.run(traceable=True)
    return plan.outputs


def library_op(name: str, fn):
    """`fn` (its launches through `run_traceable`) as the operator `name`.  On a device a
    torch.library.triton_op: torch.compile traces into it and sees the kernels.  Under the
    interpreter, whose kernels wrap_triton does not take, an opaque custom_op whose fake impl
    is fn itself on fake tensors (its launches skipped: KernelLaunch.run)."""
    if interpreting():
        op = torch.library.custom_op(name, fn, mutates_args=())
        op.register_fake(fn)
        return op
    from torch.library import triton_op

    return triton_op(name, fn, mutates_args=())


def trainable_ops(name: str, forward, backward, formula, setup_context):
    """The ops ssmc::{name}_triton (`forward`) and ssmc::{name}_bwd_triton (`backward`), both
    `library_op`s, the first with `formula` (which calls the second) as its autograd formula.
    Call at import: torch.compile's trace cannot define an op."""
    bwd = library_op(f"ssmc::{name}_bwd_triton", backward)
    fwd = library_op(f"ssmc::{name}_triton", forward)
    fwd.register_autograd(formula, setup_context=setup_context)
    return fwd, bwd


def cast_grads(grads, dtypes, needed) -> list:
    """An op's fp32 gradients in the inputs' dtypes; None where no gradient is wanted or the
    input was absent (dtype None)."""
    return [None if g is None or dt is None or not need else g.to(dt)
            for g, dt, need in zip(grads, dtypes, needed)]


# Active record_launches() blocks: each a set of the JIT functions launched in it.
_RECORDERS: list[set] = []


@contextlib.contextmanager
def record_launches():
    """Collect the Triton JIT functions launched inside the block (what CompiledModel.save
    keeps the compiled kernels of: ssmc.runtime.saved_triton)."""
    seen: set = set()
    _RECORDERS.append(seen)
    try:
        yield seen
    finally:
        _RECORDERS.remove(seen)


@dataclass
class LaunchPlan:
    """A family's launches in order, and the tensors it returns once they have run."""

    launches: list
    outputs: tuple

    def run(self):
        if self.outputs and isinstance(self.outputs[0], torch.Tensor) \
                and self.outputs[0].device.type == "meta":
            raise RuntimeError("a plan built from meta tensors can be compiled, not run")
        for launch in self.launches:
            launch.run()
        return self.outputs


def grid_dim(n: int, block: int) -> int:
    return max(triton.cdiv(int(n), int(block)), 1)
