"""ssmc: a compiler and autotuner for state-space-model graphs."""

import os as _os

__version__ = "0.1.0"

# Triton 3.9 warns unless this is set.  We keep fused multiply-add on (the 3.9 default): the
# tolerances in tests are set for it, and it is what users' Triton kernels do today.
_os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
# TVM's CPU thread pool spins after each parallel kernel, taking the cores from torch's
# OpenMP threads (which spin too) when the two alternate, as every compiled model does
# (kernels between torch GEMMs and elementwise ops).  Measured on the 2-core host, torch with
# 2 threads: compiled mamba forward b2 L1024 38 / 28 ms -> 26 / 19 ms (two runs), Mamba-1
# scan fwd+bwd at b8 L64 8.0 -> 2.4-3.3 ms; an isolated scan kernel pays ~1 ms of wake-up
# (2.1 -> 2.9 ms at b2 d256 L1024).  Read when the pool starts; a value set by the user wins.
_os.environ.setdefault("TVM_THREAD_POOL_SPIN_COUNT", "0")

from ssmc.errors import SpecError, SsmcError  # noqa: E402

__all__ = ["__version__", "SpecError", "SsmcError", "load_spec", "compile", "load"]


def load_spec(path_or_text, **kw):
    """Parse and verify a spec file (or YAML text); returns an ssmc.ir.Graph."""
    from ssmc.ir.spec import load_spec as _load

    return _load(path_or_text, **kw)


def compile(spec_or_path, target="auto", dtype=None, **kw):
    """Compile a spec for a target ('auto' = this host) -> CompiledModel (an nn.Module with the
    reference model's parameter names)."""
    from ssmc.runtime.compiled import compile as _compile

    return _compile(spec_or_path, target=target, dtype=dtype, **kw)


def load(directory, target=None, **kw):
    """A CompiledModel saved with `CompiledModel.save(directory)`: same weights, same kernel
    choices (no recompile when the kernel cache holds them).  A model saved by another stack
    (ssmc, torch, triton, tvm or target version) is rebuilt with a VersionMismatchWarning
    (on_mismatch="error" raises instead)."""
    from ssmc.runtime.saveload import load as _load

    return _load(directory, target=target, **kw)


def accelerate(model, target="auto", **kw):
    """Run a transformers Mamba / Mamba-2 model (MambaForCausalLM, Mamba2ForCausalLM, their base
    models, or any module holding their mixers) on ssmc's kernels, in place: the selective scan,
    conv1d + SiLU, and generate()'s one-token decode steps.  Weights are shared, not copied.
    target: 'auto' (TVM on the CPU, Triton on a GPU), 'tvm', 'triton' or 'reference'.  Returns
    the model; `ssmc.restore(model)` undoes it."""
    from ssmc.hf.accelerated import accelerate as _accelerate

    return _accelerate(model, target=target, **kw)


def restore(model):
    """Undo `ssmc.accelerate(model)`; returns the model."""
    from ssmc.hf.accelerated import restore as _restore

    return _restore(model)
