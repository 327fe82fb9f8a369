"""What the kernel tests of several files share (imported as `from .kernelutil import ...`):
random operands of the 2-D SSM and the PLRNN, a compiled zoo model with its eager reference,
a spy on a launch-plan builder, and the ahead-of-time compile of plans in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys

import torch


def ssm2d_operands(b, T, V, d, N, bc=("d",) * 4, dt=("d", "d"), seed=0, softplus=False,
                   dtype=torch.float32) -> list:
    """x, A1..A4, B1, B2, C1, C2, dt_t, dt_v, D (CPU).  bc / dt give each operand's form: 'd'
    per channel ((d, N) / (d,)), 'cell' per cell ((b, T, V, N) shared by the channels /
    (b, T, V, d)), 'full' (b, T, V, d, N).  Steps from tiny (expm1 near 0) to large
    (|dt A| > 1), or with softplus their pre-activation (some above its threshold 20).  x, B/C
    and the steps in `dtype`."""
    g = torch.Generator().manual_seed(seed)

    def rn(*s):
        return torch.randn(*s, generator=g)

    x = rn(b, T, V, d).to(dtype)
    A1, A4 = -(0.5 + torch.rand(d, N, generator=g)), -(0.5 + torch.rand(d, N, generator=g))
    A2, A3 = 0.3 * rn(d, N), 0.3 * rn(d, N)
    shapes = {"d": (d, N), "cell": (b, T, V, N), "full": (b, T, V, d, N)}
    B1, B2, C1, C2 = (rn(*shapes[f]).to(dtype) for f in bc)
    dts = []
    for f in dt:
        u = torch.rand(*((d,) if f == "d" else (b, T, V, d)), generator=g)
        dts.append((u * 1.5 + 1e-3 if not softplus else
                    torch.where(u > 0.9, 21 + u, 4 * u - 3)).to(dtype))
    return [x, A1, A2, A3, A4, B1, B2, C1, C2, *dts, rn(d)]


def plrnn_operands(b, L, k_in, M, z0=None, seed=0, dtype=torch.float32) -> list:
    """s, A, W, h0, C, z0 (CPU) like semantics.modules_misc.PLRNN's parameters (a stable A, a
    small W, with a diagonal the kernels must ignore), a non-zero h0; z0 None, "batch" (b, M)
    or "shared" (M,)."""
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(b, L, k_in, generator=g).to(dtype)
    A = 0.5 + 0.4 * torch.rand(M, generator=g)
    W = torch.randn(M, M, generator=g) * (0.3 / M ** 0.5) + 5 * torch.eye(M)
    h0 = 0.1 * torch.randn(M, generator=g)
    C = torch.randn(M, k_in, generator=g) / k_in ** 0.5
    if z0 is not None:
        z0 = torch.randn(*((b, M) if z0 == "batch" else (M,)), generator=g)
    return [s, A, W, h0, C, z0]


def compiled_with_reference(spec: str, target: str, seed=0, **kw):
    """ssmc.compile of the zoo's `spec` for `target` and the eager reference model with the
    same weights."""
    import ssmc
    from ssmc.paths import zoo_dir
    from ssmc.semantics.model import build_reference

    torch.manual_seed(seed)
    model = ssmc.compile(zoo_dir() / f"{spec}.yaml", target, **kw)
    ref = build_reference(model.source_graph)
    ref.load_state_dict(model.state_dict())
    return model, ref


def assert_param_grads_close(model, ref, tol):
    """Every parameter of `model` has the gradient `ref`'s has, within the fp32 tolerance (atol
    relative to the gradient's magnitude: sums over many cells reach O(100))."""
    got = dict(model.named_parameters())
    for name, p in ref.named_parameters():
        if not p.requires_grad:  # a frozen one (convssm's fixed HRF) gets none in either
            assert got[name].grad is None and not got[name].requires_grad, name
            continue
        assert got[name].grad is not None, name
        scale = max(1.0, p.grad.abs().max().item() / 10)
        torch.testing.assert_close(got[name].grad, p.grad, rtol=tol[torch.float32]["rtol"],
                                   atol=tol[torch.float32]["atol"] * scale, msg=name)


def spy(monkeypatch, module, name: str) -> list:
    """Replace module.name (a function) by one that records what each call returns."""
    seen, real = [], getattr(module, name)

    def wrapper(*a, **k):
        seen.append(real(*a, **k))
        return seen[-1]

    monkeypatch.setattr(module, name, wrapper)
    return seen


def opcheck_triton_ops(monkeypatch, module, run) -> None:
    """opcheck of module.triton_op() (the forward, its autograd formula included: the inputs
    keep requires_grad) and module.triton_bwd_op() on the arguments a training call passes
    them (captured while `run()` trains through them).  Both are triton_ops on a device and
    opaque custom_ops under the interpreter (ssmc.codegen.triton.common.library_op)."""
    import torch

    calls: dict = {}
    for getter in ("triton_op", "triton_bwd_op"):
        real = getattr(module, getter)
        calls[real] = []

        def recording(real=real):
            op = real()

            def call(*a):
                calls[real].append(a)
                return op(*a)
            return call

        monkeypatch.setattr(module, getter, recording)
    run()
    (fwd, f_calls), (bwd, b_calls) = calls.items()
    assert f_calls and b_calls, "the forward or the backward op was not called"
    torch.library.opcheck(fwd(), f_calls[0])
    # detached: a backward op is not differentiated again (no double backward)
    torch.library.opcheck(bwd(), tuple(a.detach() if isinstance(a, torch.Tensor) else a
                                       for a in b_calls[0]))


_COMPILE = """
import torch, triton
from triton.backends.compiler import GPUTarget
from ssmc.codegen.triton.aot import _amdgcn_usage, _ast_source, _ptxas_usage
def e(*shape, dtype=torch.float32):
    return torch.empty(*shape, dtype=dtype, device="meta")
{setup}
for i, plan in enumerate(plans):
    for tgt in (GPUTarget("cuda", 90, 32), GPUTarget("hip", "gfx942", 64)):
        for launch in plan.launches:
            c = triton.compile(_ast_source(launch, tgt), target=tgt,
                               options={{"num_warps": launch.num_warps,
                                        "num_stages": launch.num_stages}})
            regs, spills = (_ptxas_usage(c.asm["ptx"], 90) if "ptx" in c.asm
                            else _amdgcn_usage(c.asm["amdgcn"]))
            print("AOT", i, tgt.backend, launch.name, regs, spills)
"""


def compile_plans(setup: str, timeout=600) -> list[tuple]:
    """Compile for sm_90 and gfx942 the launches of `plans`, a list that the code `setup`
    builds from meta tensors (`e(*shape, dtype=...)` makes one), in a subprocess without
    TRITON_INTERPRET (the interpreter's kernels cannot be compiled): (plan index, backend,
    kernel, registers, spills) per compile.  The variants a family's registered example
    (test_triton_aot.py) does not cover."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, "-c", _COMPILE.format(setup=setup)], env=env,
                         capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [line.split()[1:] for line in out.stdout.splitlines() if line.startswith("AOT")]
    return [(int(i), backend, name, int(regs), int(spills)) for i, backend, name, regs, spills
            in rows]
