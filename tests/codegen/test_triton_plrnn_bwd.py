"""The Triton PLRNN backward (ssmc.codegen.triton.plrnn.backward: the adjoint recurrence over
the forward's trajectory), through the interpreter, against autograd through the oracle
plrnn_ref: the gradients of s, A, W, h0, C and z0 (per trajectory, shared, none) at L in
{1, 7, 100}, M from 1 to 64 (padded to powers of two), blocks of trajectories with a ragged
tail; a compiled convSSM for sm_90 training through it (a launch counter); the compile for
sm_90 / gfx942 of its variant with z0 (slow; the family plrnn.backward's is in
test_triton_aot.py); and a device run (gpu)."""

from __future__ import annotations

import pytest
import torch

from ssmc.codegen.triton.common import interpreting
from ssmc.codegen.triton.plrnn import backward as pbw
from ssmc.codegen.triton.plrnn.sequential import PlrnnSequentialConfig
from ssmc.semantics.recurrence import plrnn_ref

from .kernelutil import (compile_plans, compiled_with_reference, opcheck_triton_ops,
                         plrnn_operands, spy)

pytestmark = pytest.mark.skipif(not interpreting() and not torch.cuda.is_available(),
                                reason="needs a GPU or TRITON_INTERPRET=1")
DEV = "cuda" if not interpreting() else "cpu"
NAMES = ("s", "A", "W", "h0", "C", "z0")


def make(b, L, k_in, M, z0=None, seed=0, dtype=torch.float32):
    return [None if t is None else t.to(DEV)
            for t in plrnn_operands(b, L, k_in, M, z0, seed, dtype)]


def grads(fn, ins, gz, wanted=NAMES):
    """fn's output and the gradients of <out, gz> for the inputs named in `wanted`."""
    leaves = [None if t is None else t.detach().clone().requires_grad_(n in wanted)
              for n, t in zip(NAMES, ins)]
    out = fn(*leaves)
    (out.float() * gz).sum().backward()
    return out, [None if t is None else t.grad for t in leaves]


def compare(ins, gz, tol, config=None, wanted=NAMES):
    z, got = grads(lambda *a: pbw.plrnn_trainable(*a, config=config), ins, gz, wanted)
    rz, want = grads(lambda *a: plrnn_ref(*a), [None if t is None else t.cpu() for t in ins],
                     gz.cpu(), wanted)
    torch.testing.assert_close(z.cpu(), rz, **tol[z.dtype])
    for name, g, w in zip(NAMES, got, want):
        assert (g is None) == (w is None), name
        if g is None:
            continue
        assert g.dtype == w.dtype and not torch.isnan(g).any(), name
        torch.testing.assert_close(g.cpu(), w, **tol[g.dtype], msg=lambda m: f"{name}: {m}")


CASES = {  # b, L, K_in, M, z0, block_b
    "B3-L1-K3-M16": (3, 1, 3, 16, None, None),
    "B3-L7-K3-M16-z0": (3, 7, 3, 16, "batch", 2),  # a 2-trajectory block, a 1-trajectory tail
    "B2-L7-K5-M5-z0shared": (2, 7, 5, 5, "shared", 1),  # M, K_in padded to powers of two
    "B2-L7-K1-M1": (2, 7, 1, 1, None, None),
    "B2-L100-K3-M16-z0": (2, 100, 3, 16, "batch", 2),
}
SLOW_CASES = {
    "B5-L130-K8-M64-z0": (5, 130, 8, 64, "batch", 2),
    "B4-L257-K3-M32-z0shared": (4, 257, 3, 32, "shared", None),
}


def _run_case(case, tol):
    b, L, k_in, M, z0, block_b = case
    ins = make(b, L, k_in, M, z0, seed=L + M)
    gz = torch.randn(b, L, M, device=DEV)
    compare(ins, gz, tol, PlrnnSequentialConfig(block_b=block_b))


@pytest.mark.parametrize("case", list(CASES))
def test_gradients_match_oracle(case, tol):
    _run_case(CASES[case], tol)


@pytest.mark.slow
@pytest.mark.parametrize("case", list(SLOW_CASES))
def test_gradients_match_oracle_bigger(case, tol):
    _run_case(SLOW_CASES[case], tol)


def test_only_some_gradients(tol):
    """Inputs that do not require grad get none; the others are unchanged."""
    ins = make(2, 7, 3, 8, "batch", seed=1)
    compare(ins, torch.randn(2, 7, 8, device=DEV), tol, wanted=("W", "z0"))


def test_half_inputs(tol):
    """fp16 s: the forward and the adjoint in fp32, the gradient of s in fp16."""
    ins = make(2, 7, 3, 8, None, seed=2, dtype=torch.float16)
    compare(ins, torch.randn(2, 7, 8, device=DEV), tol)


def test_empty_sequence_has_no_kernel():
    s, A, W, h0, C, _ = make(2, 0, 3, 4)
    assert pbw.plrnn_trainable(s, A, W, h0, C).shape == (2, 0, 4)


# ---- a compiled convSSM for sm_90, trained ---------------------------------------------------

@pytest.fixture(scope="module")
def convssm_sm90():
    return compiled_with_reference("convssm", "sm_90", seqlen=64, batch=2)


@pytest.mark.skipif(not interpreting(), reason="the interpreter runs CPU tensors")
@pytest.mark.parametrize("learnable_hrf", [False, True], ids=["fixed-hrf", "learnable-hrf"])
def test_compiled_convssm_trains_on_the_triton_backward(convssm_sm90, learnable_hrf, tol,
                                                        monkeypatch):
    """With gradients the executor runs the Triton forward and the adjoint kernel (one
    backward launch), then the HRF conv in torch: the reference's gradients, the HRF's too
    when it is learnable."""
    model, ref = convssm_sm90
    plans = spy(monkeypatch, pbw, "plan_plrnn_backward")
    hrf = [p for n, p in model.named_parameters() if n.endswith("kernel")]
    hrf_ref = [p for n, p in ref.named_parameters() if n.endswith("kernel")]
    for p in hrf + hrf_ref:
        monkeypatch.setattr(p, "requires_grad", learnable_hrf)
    s = torch.randn(2, 9, 3)
    s_grads = []
    for m in (model, ref):
        m.zero_grad(set_to_none=True)
        x = s.clone().requires_grad_()
        m(x).square().mean().backward()
        s_grads.append(x.grad)
    assert len(plans) == 1
    torch.testing.assert_close(s_grads[0], s_grads[1], **tol[torch.float32])
    for (name, p), q in zip(model.named_parameters(), ref.parameters()):
        if not p.requires_grad:
            continue
        assert p.grad is not None, name
        torch.testing.assert_close(p.grad, q.grad, **tol[torch.float32])
    assert bool(hrf) and all((p.grad is not None) == learnable_hrf for p in hrf)


# ---- compiled for real targets; on a device --------------------------------------------------

@pytest.mark.slow
def test_backward_kernel_with_z0_compiles_for_sm90_and_gfx942():
    """The variant with an initial state per trajectory (the registered family compiles the
    one without, in test_triton_aot.py): no spills."""
    compiled = compile_plans("""
from ssmc.codegen.triton.plrnn.backward import plan_plrnn_backward
b, L, M, k = 64, 1024, 16, 3
plans = [plan_plrnn_backward(e(b, L, M), e(b, L, M), e(b, L, k), e(M), e(M, M), e(M, k),
                             e(b, M))]
""")
    assert len(compiled) == 2 and all(row[-1] == 0 for row in compiled), compiled


@pytest.mark.gpu
@pytest.mark.skipif(interpreting() or not torch.cuda.is_available(),
                    reason="needs a CUDA/ROCm device (SSMC_GPU_TESTS=1)")
@pytest.mark.parametrize("L", [1, 1000])
def test_gpu_against_oracle(L, tol):
    """Realistic sizes on a device: many trajectories, M 16, z0; the fp32 oracle on the CPU."""
    ins = make(256, L, 3, 16, "batch", seed=L)
    compare(ins, torch.randn(256, L, 16, device=DEV), tol)


def _opcheck(monkeypatch):
    ins = make(2, 7, 3, 4, z0="batch")
    gz = torch.randn(2, 7, 4, device=DEV)
    opcheck_triton_ops(monkeypatch, pbw, lambda: grads(pbw.plrnn_trainable, ins, gz))


@pytest.mark.parametrize("tier", ["interpreter", pytest.param("device", marks=pytest.mark.gpu)])
def test_opcheck_triton_ops(monkeypatch, tier):
    """opcheck of ssmc::plrnn_triton (its autograd formula too) and ssmc::plrnn_bwd_triton on
    the arguments a training call passes them: triton_ops on a device (gpu tier), custom_ops
    under the interpreter."""
    if (tier == "device") == interpreting():
        pytest.skip(f"the {tier} run")
    _opcheck(monkeypatch)
