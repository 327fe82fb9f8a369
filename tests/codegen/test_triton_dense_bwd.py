"""The Triton dense / block-diagonal scan backward (ssmc.codegen.triton.dense.backward: the
adjoint scan over the stored trajectory), through the interpreter, against autograd through the
oracle: the scan's gradients (u, x, A_k, A0 or the per-step A, the initial state) against
dense_scan_ref at L in {1, 7, 100}, blocks 1..16 (3 padded to 4), block groups with a ragged
tail; the whole layer (W_B, W_C, D, A_0, x, "linear" and "expm", A_k too big to build in the
kernel) against dense_ssm; a compiled linear CDE for sm_90 training through it (a launch
counter); the compile for sm_90 / gfx942 of the variants the family dense.backward (in
test_triton_aot.py) does not compile (slow); and a device run (gpu)."""

from __future__ import annotations

import pytest
import torch

from ssmc.codegen.triton.common import interpreting
from ssmc.codegen.triton.dense import backward as dbw
from ssmc.codegen.triton.dense.sequential import DenseSequentialConfig
from ssmc.semantics.dense import dense_scan_ref, dense_ssm

from .kernelutil import compile_plans, compiled_with_reference, opcheck_triton_ops, spy

pytestmark = pytest.mark.skipif(not interpreting() and not torch.cuda.is_available(),
                                reason="needs a GPU or TRITON_INTERPRET=1")
DEV = "cuda" if not interpreting() else "cpu"
SCAN_NAMES = ("u", "x", "A_k", "A0", "A", "initial_state")


def grads(fn, ins: dict, gout, wanted=None):
    """fn(**leaves) and the gradients of <out, gout> for the inputs (all, or those `wanted`)."""
    leaves = {k: None if v is None else v.detach().clone().requires_grad_(
        wanted is None or k in wanted) for k, v in ins.items()}
    out = fn(**leaves)
    outs = out if isinstance(out, tuple) else (out,)
    sum((o.float() * g).sum() for o, g in zip(outs, gout)).backward()
    return outs, {k: None if v is None else v.grad for k, v in leaves.items()}


def check_all(got, want, tol):
    for name in want:
        g, w = got[name], want[name]
        assert (g is None) == (w is None), name
        if g is None:
            continue
        assert g.dtype == w.dtype and not torch.isnan(g).any(), name
        torch.testing.assert_close(g.cpu(), w.cpu(), **tol[g.dtype],
                                   msg=lambda m: f"{name}: {m}")


def scan_inputs(b, L, K, N, bs, given, has_h0, seed=0):
    g = torch.Generator().manual_seed(seed)
    nb = N // bs
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    A0 = 0.9 * torch.eye(bs) + 0.02 * r(nb, bs, bs)
    A_k = r(K, nb, bs, bs) * (0.3 / (K * bs) ** 0.5)
    x = r(b, L, K)
    ins = {"u": r(b, L, N), "initial_state": r(b, N) if has_h0 else None}
    if given:
        ins["A"] = torch.einsum("blk,knij->blnij", x, A_k) + A0
    else:
        ins.update(x=x, A_k=A_k, A0=A0)
    return {k: None if v is None else v.to(DEV) for k, v in ins.items()}


def scan_ref(b, L, nb, bs):
    def run(u, x=None, A_k=None, A0=None, A=None, initial_state=None):
        if A is None:
            A = torch.einsum("blk,knij->blnij", x, A_k) + A0
        h0 = None if initial_state is None else initial_state.reshape(b, nb, bs)
        return dense_scan_ref(A, u.reshape(b, L, nb, bs), h0).reshape(b, L, nb * bs)
    return run


SCAN_CASES = {  # b, L, K, N, bs, given, h0, block_nb
    "B2-L1-K8-N16-bs4": (2, 1, 8, 16, 4, False, True, 1),
    "B2-L7-K8-N16-bs4-nb2": (2, 7, 8, 16, 4, False, True, 2),
    "B2-L7-K5-N9-bs3": (2, 7, 5, 9, 3, False, True, 2),  # blocks padded to 4, a 1-block tail
    "B2-L7-N16-bs16-given": (2, 7, 4, 16, 16, True, True, 1),
    "B1-L7-N6-bs1": (1, 7, 3, 6, 1, False, True, 4),  # a diagonal transition
    "B1-L100-K8-N16-bs4-nb4": (1, 100, 8, 16, 4, False, False, 4),
}
SLOW_CASES = {
    "B2-L130-K32-N16-bs4-nb4": (2, 130, 32, 16, 4, False, True, 4),  # lcde.yaml's sizes
    "B2-L100-N64-bs32-given": (2, 100, 1, 64, 32, True, True, 1),
}


def _run_scan(case, tol):
    b, L, K, N, bs, given, has_h0, block_nb = case
    ins = scan_inputs(b, L, K, N, bs, given, has_h0, seed=L + N)
    gh = torch.randn(b, L, N, device=DEV)
    cfg = DenseSequentialConfig(block_nb=block_nb)
    (h,), got = grads(lambda **kw: dbw.dense_scan_trainable(**kw, config=cfg), ins, [gh])
    cpu = {k: None if v is None else v.cpu() for k, v in ins.items()}
    (rh,), want = grads(scan_ref(b, L, N // bs, bs), cpu, [gh.cpu()])
    torch.testing.assert_close(h.cpu(), rh, **tol[torch.float32])
    check_all(got, want, tol)


@pytest.mark.parametrize("case", list(SCAN_CASES))
def test_scan_gradients_match_oracle(case, tol):
    _run_scan(SCAN_CASES[case], tol)


@pytest.mark.slow
@pytest.mark.parametrize("case", list(SLOW_CASES))
def test_scan_gradients_match_oracle_bigger(case, tol):
    _run_scan(SLOW_CASES[case], tol)


def layer(b, L, d, N, bs, seed=0, dtype=torch.float32):
    """A DenseSSM layer's parameters as it initialises them, an input and an initial state."""
    g = torch.Generator().manual_seed(seed)
    nb = N // bs
    p = dict(x=torch.randn(b, L, d, generator=g).to(dtype),
             A_k=torch.randn(d, nb, bs, bs, generator=g) * (0.3 / (d * bs) ** 0.5),
             W_B=torch.randn(N, d, generator=g) / d ** 0.5,
             W_C=torch.randn(d, N, generator=g) / N ** 0.5, D=torch.randn(d, generator=g),
             initial_state=torch.randn(b, N, generator=g),
             A_0=-0.1 * torch.eye(bs).expand(nb, bs, bs) + 0.02 * torch.randn(nb, bs, bs,
                                                                              generator=g))
    return {k: v.to(DEV) for k, v in p.items()}


LAYER_CASES = {  # b, L, d, N, bs, mode
    "B2-L7-linear": (2, 7, 8, 16, 4, "linear"),
    "B2-L7-expm": (2, 7, 6, 8, 4, "expm"),
    "B1-L7-A_k-too-big": (1, 7, 40, 16, 16, "linear"),  # transitions built in torch, streamed
}


@pytest.mark.parametrize("case", list(LAYER_CASES))
def test_layer_gradients_match_oracle(case, tol):
    b, L, d, N, bs, mode = LAYER_CASES[case]
    p = layer(b, L, d, N, bs, seed=L + d)
    gy, glast = torch.randn(b, L, d, device=DEV), torch.randn(b, N, device=DEV)

    def tri(**kw):
        return dbw.dense_ssm_trainable(mode=mode, return_final_state=True, **kw)

    def ref(**kw):
        return dense_ssm(mode=mode, scan="sequential", return_final_state=True, **kw)

    (y, last), got = grads(tri, p, [gy, glast])
    (ry, rlast), want = grads(ref, {k: v.cpu() for k, v in p.items()}, [gy.cpu(), glast.cpu()])
    torch.testing.assert_close(y.cpu(), ry, **tol[torch.float32])
    torch.testing.assert_close(last.cpu(), rlast, **tol[torch.float32])
    check_all(got, want, tol)


def test_half_inputs_and_some_gradients(tol):
    """fp16 x (the kernel reads it in fp16, computes in fp32; y and dx in fp16, so the
    gradient reaching y is rounded to fp16 as in the oracle); only x, A_k."""
    p = layer(2, 7, 8, 16, 4, seed=5, dtype=torch.float16)
    gy = torch.randn(2, 7, 8, device=DEV)
    (y,), got = grads(lambda **kw: dbw.dense_ssm_trainable(**kw), p, [gy], ("x", "A_k"))
    cpu = {k: v.cpu() for k, v in p.items()}
    (ry,), want = grads(lambda **kw: dense_ssm(**kw), cpu, [gy.cpu()], ("x", "A_k"))
    assert y.dtype == got["x"].dtype == torch.float16 and got["W_B"] is None
    torch.testing.assert_close(y.cpu(), ry, **tol[torch.float16])
    check_all(got, want, tol)


# ---- a compiled linear CDE for sm_90, trained ------------------------------------------------

@pytest.fixture(scope="module")
def lcde_sm90():
    return compiled_with_reference("lcde", "sm_90", seed=3, seqlen=256)


@pytest.mark.skipif(not interpreting(), reason="the interpreter runs CPU tensors")
def test_compiled_lcde_trains_on_the_triton_backward(lcde_sm90, tol, monkeypatch):
    """With gradients the executor runs the Triton scan and its adjoint kernel (one backward
    launch), the projections in torch: the reference's gradients."""
    model, ref = lcde_sm90
    plans = spy(monkeypatch, dbw, "plan_dense_scan_backward")
    x = torch.randn(2, 9, 8)
    x_grads = []
    for m in (model, ref):
        m.zero_grad(set_to_none=True)
        xi = x.clone().requires_grad_()
        m(xi).square().mean().backward()
        x_grads.append(xi.grad)
    assert len(plans) == 1 and not plans[0].launches[0].constexprs["GIVEN"]
    torch.testing.assert_close(x_grads[0], x_grads[1], **tol[torch.float32])
    for (name, p), q in zip(model.named_parameters(), ref.parameters()):
        assert p.grad is not None, name
        torch.testing.assert_close(p.grad, q.grad, **tol[torch.float32])


# ---- compiled for real targets; on a device --------------------------------------------------

@pytest.mark.slow
def test_backward_kernel_variants_compile_for_sm90_and_gfx942():
    """The variants the registered family (dense.backward: lcde's, in test_triton_aot.py)
    does not compile: four blocks a program with an initial state, and transitions given per
    step.  No spills."""
    compiled = compile_plans("""
from ssmc.codegen.triton.dense.backward import plan_dense_scan_backward
from ssmc.codegen.triton.dense.sequential import DenseSequentialConfig
b, L = 8, 1024
plans = [plan_dense_scan_backward(e(b, L, 16), e(b, L, 16), x=e(b, L, 32), A_k=e(32, 4, 4, 4),
                                  A0=e(4, 4, 4), initial_state=e(b, 16),
                                  config=DenseSequentialConfig(block_nb=4)),
         plan_dense_scan_backward(e(b, L, 16), e(b, L, 16), A=e(b, L, 1, 16, 16))]
""")
    assert len(compiled) == 4 and all(row[-1] == 0 for row in compiled), compiled


@pytest.mark.gpu
@pytest.mark.skipif(interpreting() or not torch.cuda.is_available(),
                    reason="needs a CUDA/ROCm device (SSMC_GPU_TESTS=1)")
@pytest.mark.parametrize("L", [1, 1000])
def test_gpu_layer_against_oracle(L, tol):
    """lcde.yaml's sizes on a device: the layer's gradients against the fp32 oracle (CPU)."""
    p = layer(4, L, 32, 16, 4, seed=L)
    gy = torch.randn(4, L, 32, device=DEV)
    (y,), got = grads(lambda **kw: dbw.dense_ssm_trainable(**kw), p, [gy])
    (ry,), want = grads(lambda **kw: dense_ssm(**kw), {k: v.cpu() for k, v in p.items()},
                        [gy.cpu()])
    torch.testing.assert_close(y.cpu(), ry, **tol[torch.float32])
    check_all(got, want, tol)


def _opcheck(monkeypatch):
    ins = scan_inputs(2, 7, 3, 8, 4, False, True, seed=1)
    gh = torch.randn(2, 7, 8, device=DEV)
    opcheck_triton_ops(monkeypatch, dbw, lambda: grads(
        lambda **kw: dbw.dense_scan_trainable(**kw), ins, [gh]))


@pytest.mark.parametrize("tier", ["interpreter", pytest.param("device", marks=pytest.mark.gpu)])
def test_opcheck_triton_ops(monkeypatch, tier):
    """opcheck of ssmc::dense_scan_triton (its autograd formula too) and
    ssmc::dense_scan_bwd_triton on the arguments a training call passes them: triton_ops on a
    device (gpu tier), custom_ops under the interpreter."""
    if (tier == "device") == interpreting():
        pytest.skip(f"the {tier} run")
    _opcheck(monkeypatch)
