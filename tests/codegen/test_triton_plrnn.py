"""The Triton PLRNN kernel (ssmc.codegen.triton.plrnn) against the oracle plrnn_ref, and its
fused HRF convolution against causal_conv_direct, through the interpreter (TRITON_INTERPRET=1,
set by conftest) on small batches; a compiled convSSM for sm_90 running it with the HRF folded
in.  Its ahead-of-time compile for sm_90 / gfx942 is in test_triton_aot.py (every registered
family), and `ssmc compile ir/convssm.yaml --target sm_90` in tests/cli/test_compile_cmd.py."""

import pytest
import torch

from ssmc.codegen.triton.common import interpreting
from ssmc.codegen.triton.plrnn import (FUSE_MAX_TAPS, PlrnnSequentialConfig, plan_plrnn,
                                       plrnn_sequential)
from ssmc.semantics.recurrence import causal_conv_direct, hrf_double_gamma, plrnn_ref

from .kernelutil import compiled_with_reference, plrnn_operands

pytestmark = pytest.mark.skipif(not interpreting() and not torch.cuda.is_available(),
                                reason="needs a GPU or TRITON_INTERPRET=1")
DEV = "cuda" if not interpreting() else "cpu"


def make(b, L, k_in, M, seed=0, dtype=torch.float32):
    """s, A, W, h0, C on DEV (kernelutil.plrnn_operands)."""
    return tuple(t.to(DEV) for t in plrnn_operands(b, L, k_in, M, None, seed, dtype)[:5])


def check(got, want, tol):
    assert got.dtype == want.dtype and got.shape == want.shape
    assert not torch.isnan(got.float()).any()
    torch.testing.assert_close(got.cpu(), want.cpu(), **tol[got.dtype])


CASES = {  # b, L, K_in, M, z0, block_b
    "B3-L1-K3-M16": (3, 1, 3, 16, None, None),
    "B3-L7-K3-M16-z0": (3, 7, 3, 16, "batch", 2),   # a 2-trajectory block and a 1-trajectory tail
    "B2-L300-K3-M16": (2, 300, 3, 16, "shared", 2),
    "B2-L7-K5-M5": (2, 7, 5, 5, "batch", 1),         # M and K_in padded to powers of two
}


@pytest.mark.parametrize("case", list(CASES))
def test_trajectory_matches_oracle(case, tol):
    b, L, k_in, M, z0, block_b = CASES[case]
    s, A, W, h0, C = make(b, L, k_in, M, seed=L)
    z0 = {None: None, "batch": torch.randn(b, M), "shared": torch.randn(M)}[z0]
    z0 = None if z0 is None else z0.to(DEV)
    z = plrnn_sequential(s, A, W, h0, C, z0, config=PlrnnSequentialConfig(block_b=block_b))
    check(z, plrnn_ref(s.cpu(), A.cpu(), W.cpu(), h0.cpu(), C.cpu(),
                       None if z0 is None else z0.cpu()), tol)


HRF_CASES = {  # b, L, taps, per-unit kernel
    "L1-K17": (2, 1, 17, False),     # taps clipped to L
    "L7-K5-per-unit": (2, 7, 5, True),
    "L40-K17": (1, 40, 17, False),   # SPM's HRF at TR 2 s; a ring of 32 slots wraps
    "L300-K32": (2, 300, 32, True),  # convssm.yaml's hrf_len
}


@pytest.mark.parametrize("case", list(HRF_CASES))
def test_fused_hrf_matches_oracle(case, tol):
    b, L, K, per_unit = HRF_CASES[case]
    M = 16
    s, A, W, h0, C = make(b, L, 3, M, seed=K)
    hrf = hrf_double_gamma(2.0, K)
    if per_unit:
        hrf = hrf * torch.linspace(0.5, 1.5, M)[:, None]
    hrf = hrf.to(DEV)
    cfg = PlrnnSequentialConfig(block_b=2)
    z, zc = plrnn_sequential(s, A, W, h0, C, hrf=hrf, config=cfg)
    ref = plrnn_ref(s.cpu(), A.cpu(), W.cpu(), h0.cpu(), C.cpu())
    check(z, ref, tol)
    check(zc, causal_conv_direct(ref, hrf.cpu()), tol)
    # the epilogue form a compiled model runs: only the convolved trajectory
    only = plrnn_sequential(s, A, W, h0, C, hrf=hrf, return_trajectory=False, config=cfg)
    torch.testing.assert_close(only, zc, rtol=0, atol=0)


def test_long_hrf_runs_the_fft_after_the_kernel(tol):
    """More taps than the register ring holds: the kernel writes z, torch's FFT convolves."""
    L, K = FUSE_MAX_TAPS + 6, FUSE_MAX_TAPS + 16
    s, A, W, h0, C = make(1, L, 3, 16)
    hrf = torch.randn(K, device=DEV) / K
    plan = plan_plrnn(s, A, W, h0, C, hrf=hrf, return_trajectory=False)
    assert plan.launches[0].constexprs["TAPS"] == 0 and plan.outputs[1] is None
    zc = plrnn_sequential(s, A, W, h0, C, hrf=hrf, return_trajectory=False)
    ref = plrnn_ref(s.cpu(), A.cpu(), W.cpu(), h0.cpu(), C.cpu())
    check(zc, causal_conv_direct(ref, hrf.cpu()), tol)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_half_inputs(dtype, tol):
    """fp16/bf16 s: fp32 state and sums, the results in s's dtype."""
    s, A, W, h0, C = make(2, 7, 3, 16, dtype=dtype)
    hrf = hrf_double_gamma(2.0, 5).to(DEV)
    z, zc = plrnn_sequential(s, A, W, h0, C, hrf=hrf, config=PlrnnSequentialConfig(block_b=2))
    ref = plrnn_ref(s.cpu().float(), A.cpu(), W.cpu(), h0.cpu(), C.cpu())
    check(z, ref.to(dtype), tol)
    check(zc, causal_conv_direct(ref, hrf.cpu()).to(dtype), tol)


def test_empty_batch_or_sequence():
    s, A, W, h0, C = make(2, 0, 3, 4)
    assert plrnn_sequential(s, A, W, h0, C).shape == (2, 0, 4)
    z, zc = plrnn_sequential(s, A, W, h0, C, hrf=torch.ones(3, device=DEV))
    assert z.shape == zc.shape == (2, 0, 4)


def test_plan_on_meta_tensors():
    """The plan AOT compiles: one program per block of trajectories, the ring a power of two
    >= the taps (clipped to L), z not written when only the convolution is wanted."""
    meta = dict(device="meta")
    b, L, M, k_in = 64, 1024, 16, 3
    s = torch.empty(b, L, k_in, dtype=torch.float16, **meta)
    p = dict(A=torch.empty(M, **meta), W=torch.empty(M, M, **meta), h0=torch.empty(M, **meta),
             C=torch.empty(M, k_in, **meta))
    plan = plan_plrnn(s, **p, hrf=torch.empty(M, 17, **meta), return_trajectory=False,
                      config=PlrnnSequentialConfig(block_b=4))
    (launch,) = plan.launches
    assert launch.grid == (16,)
    assert launch.constexprs == {"BLOCK_B": 4, "BLOCK_M": 16, "BLOCK_K": 4, "TAPS": 32,
                                 "HAS_Z0": False, "WRITE_Z": False}
    assert plan.outputs[0] is None and plan.outputs[1].dtype == torch.float16
    assert tuple(launch.args["H_ptr"].shape) == (32, 16)
    plan = plan_plrnn(s[:, :5], **p, hrf=torch.empty(40, **meta))
    assert plan.launches[0].constexprs["TAPS"] == 8 and plan.outputs[0] is not None


@pytest.mark.parametrize("change,name", [
    (dict(s=torch.randn(2, 3)), "s"),
    (dict(A=torch.randn(4, 1)), "A"),
    (dict(W=torch.randn(4, 3)), "W"),
    (dict(h0=torch.randn(3)), "h0"),
    (dict(C=torch.randn(4, 2)), "C"),
    (dict(z0=torch.randn(3, 4)), "z0"),
    (dict(hrf=torch.randn(3, 5)), "hrf"),
    (dict(hrf=torch.randn(4, 0)), "hrf"),
    (dict(return_trajectory=1), "return_trajectory"),
])
def test_bad_arguments_name_the_argument(change, name):
    s, A, W, h0, C = make(2, 3, 3, 4)
    kw = dict(s=s, A=A, W=W, h0=h0, C=C)
    kw.update({k: (v.to(DEV) if isinstance(v, torch.Tensor) else v) for k, v in change.items()})
    with pytest.raises(ValueError, match=rf"^{name}\b"):
        plan_plrnn(**kw)


def test_config_knobs_are_powers_of_two():
    with pytest.raises(ValueError, match="block_b"):
        PlrnnSequentialConfig(block_b=3)


# ---- a compiled convSSM for a GPU target ----------------------------------------------------

@pytest.fixture(scope="module")
def convssm_sm90():
    model, ref = compiled_with_reference("convssm", "sm_90", seqlen=64, batch=2)
    return model.eval(), ref.eval()


@pytest.mark.skipif(not interpreting(), reason="the interpreter runs CPU tensors")
@pytest.mark.parametrize("L", [1, 7, 40])
def test_compiled_convssm_for_sm90_runs_the_fused_kernel(convssm_sm90, L, tol, monkeypatch):
    """ssmc.compile for sm_90 folds the HRF conv into the PLRNN node and its executor drives
    the Triton kernel with the HRF in its ring (here through the interpreter)."""
    from ssmc.codegen.triton.plrnn import sequential

    model, ref = convssm_sm90
    assert model.kernels == {"plrnn": "triton:recurrence/sequential + conv 'hrf'"}
    plans, real = [], sequential.plan_plrnn

    def spy(*a, **k):
        plans.append(real(*a, **k))
        return plans[-1]

    monkeypatch.setattr(sequential, "plan_plrnn", spy)
    s = torch.randn(2, L, 3)
    with torch.no_grad():
        check(model(s), ref(s), tol)
    (plan,) = plans  # the kernel ran, convolving (the ring is a power of two >= min(32, L))
    assert plan.launches[0].constexprs["TAPS"] == (1 << (min(32, L) - 1).bit_length())
    assert plan.launches[0].constexprs["WRITE_Z"] is False


@pytest.mark.skipif(not interpreting(), reason="the interpreter runs CPU tensors")
def test_compiled_convssm_gradients_match_the_reference(convssm_sm90):
    """With gradients the Triton recurrence runs with its adjoint backward (plrnn/backward.py,
    counted in test_triton_plrnn_bwd.py), then the HRF conv: the reference's gradients."""
    model, ref = convssm_sm90
    s = torch.randn(2, 9, 3)
    for m in (model, ref):
        m.zero_grad(set_to_none=True)
        m(s).square().mean().backward()
    for (name, p), q in zip(model.named_parameters(), ref.parameters()):
        if not p.requires_grad:  # convssm.yaml's HRF is fixed (learnable: false)
            continue
        assert p.grad is not None, name
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-7)
