"""The Triton dense / block-diagonal scan (ssmc.codegen.triton.dense) against the oracle
dense_scan_ref, and the whole layer against dense_ssm, through the interpreter
(TRITON_INTERPRET=1, set by conftest); a compiled linear CDE for sm_90 running it.  Its
ahead-of-time compile is in test_triton_aot.py (every registered family), and
`ssmc compile ir/lcde.yaml --target sm_90` in tests/cli/test_compile_cmd.py."""

import pytest
import torch

from ssmc.codegen.triton.common import interpreting
from ssmc.codegen.triton.dense import (DenseSequentialConfig, dense_scan_sequential,
                                       dense_ssm_sequential, plan_dense_scan, plan_dense_ssm)
from ssmc.codegen.triton.dense.sequential import builds_in_kernel
from ssmc.semantics.dense import dense_scan_ref, dense_ssm, dense_transitions

from .kernelutil import compiled_with_reference

pytestmark = pytest.mark.skipif(not interpreting() and not torch.cuda.is_available(),
                                reason="needs a GPU or TRITON_INTERPRET=1")
DEV = "cuda" if not interpreting() else "cpu"


def layer(b, L, d, N, bs, seed=0, dtype=torch.float32):
    """A DenseSSM layer's parameters as it initialises them (a contractive drift A_0, small
    A_k), and an input."""
    g = torch.Generator().manual_seed(seed)
    nb = N // bs
    x = torch.randn(b, L, d, generator=g).to(dtype)
    A_k = torch.randn(d, nb, bs, bs, generator=g) * (0.3 / (d * bs) ** 0.5)
    A_0 = -0.1 * torch.eye(bs).expand(nb, bs, bs) + 0.02 * torch.randn(nb, bs, bs, generator=g)
    W_B = torch.randn(N, d, generator=g) / d ** 0.5
    W_C = torch.randn(d, N, generator=g) / N ** 0.5
    D = torch.randn(d, generator=g)
    h0 = torch.randn(b, N, generator=g)
    return {k: v.to(DEV) for k, v in dict(x=x, A_k=A_k, A_0=A_0, W_B=W_B, W_C=W_C, D=D,
                                          h0=h0).items()}


def check(got, want, tol):
    assert got.dtype == want.dtype and got.shape == want.shape
    assert not torch.isnan(got.float()).any()
    torch.testing.assert_close(got.cpu(), want.cpu(), **tol[got.dtype])


SCAN_CASES = {  # b, L, K, N, bs, given, h0, block_nb
    "B2-L1-K8-N16-bs4": (2, 1, 8, 16, 4, False, True, 1),
    "B2-L7-K8-N16-bs4-nb2": (2, 7, 8, 16, 4, False, True, 2),
    "B1-L300-K32-N16-bs4-nb4": (1, 300, 32, 16, 4, False, False, 4),  # lcde.yaml's sizes
    "B2-L7-K5-N9-bs3": (2, 7, 5, 9, 3, False, True, 2),  # blocks padded to 4, a 1-block tail
    "B2-L7-N16-bs16-given": (2, 7, 4, 16, 16, True, True, 1),
    "B1-L7-N6-bs1": (1, 7, 3, 6, 1, False, True, 4),  # a diagonal transition
}


@pytest.mark.parametrize("case", list(SCAN_CASES))
def test_scan_matches_oracle(case, tol):
    b, L, K, N, bs, given, has_h0, block_nb = SCAN_CASES[case]
    p = layer(b, L, K, N, bs, seed=L + N)
    nb = N // bs
    A0 = torch.eye(bs, device=DEV) + p["A_0"]
    A = dense_transitions(p["x"], p["A_k"], "linear", p["A_0"])
    u = torch.randn(b, L, N, device=DEV)
    h0 = p["h0"] if has_h0 else None
    cfg = DenseSequentialConfig(block_nb=block_nb)
    if given:
        h = dense_scan_sequential(u, A=A, initial_state=h0, config=cfg)
    else:
        h = dense_scan_sequential(u, x=p["x"], A_k=p["A_k"], A0=A0, initial_state=h0,
                                  config=cfg)
    ref = dense_scan_ref(A.cpu(), u.cpu().reshape(b, L, nb, bs),
                         None if h0 is None else h0.cpu().reshape(b, nb, bs))
    check(h, ref.reshape(b, L, N), tol)


LAYER_CASES = {  # b, L, d, N, bs, mode, D, h0
    "B2-L1-linear": (2, 1, 8, 16, 4, "linear", True, True),
    "B2-L7-linear-noD": (2, 7, 8, 16, 4, "linear", False, False),
    "B1-L300-linear": (1, 300, 32, 16, 4, "linear", True, True),
    "B2-L7-expm": (2, 7, 6, 8, 4, "expm", True, True),
    "B1-L7-A_k-too-big": (1, 7, 40, 16, 16, "linear", True, False),  # A streamed in
}


@pytest.mark.parametrize("case", list(LAYER_CASES))
def test_layer_matches_oracle(case, tol):
    b, L, d, N, bs, mode, has_D, has_h0 = LAYER_CASES[case]
    p = layer(b, L, d, N, bs, seed=L + d)
    D = p["D"] if has_D else None
    h0 = p["h0"] if has_h0 else None
    y, last = dense_ssm_sequential(p["x"], p["A_k"], p["W_B"], p["W_C"], D, mode, h0, True,
                                   p["A_0"])
    cpu = {k: v.cpu() for k, v in p.items()}
    ry, rlast = dense_ssm(cpu["x"], cpu["A_k"], cpu["W_B"], cpu["W_C"],
                          None if D is None else cpu["D"], mode, "sequential",
                          None if h0 is None else cpu["h0"], True, cpu["A_0"])
    check(y, ry, tol)
    check(last, rlast, tol)
    builds = plan_dense_ssm(p["x"], p["A_k"], p["W_B"], p["W_C"], D, mode, h0, A_0=p["A_0"])
    assert builds.launches[0].constexprs["GIVEN"] == (mode == "expm"
                                                      or not builds_in_kernel(d, bs))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_half_inputs(dtype, tol):
    """fp16/bf16 x: the kernel reads x in its dtype, computes in fp32; y in x's dtype."""
    p = layer(2, 7, 8, 16, 4, dtype=dtype)
    y = dense_ssm_sequential(p["x"], p["A_k"], p["W_B"], p["W_C"], p["D"], A_0=p["A_0"])
    cpu = {k: v.cpu() for k, v in p.items()}
    ref = dense_ssm(cpu["x"].float(), cpu["A_k"], cpu["W_B"], cpu["W_C"], cpu["D"],
                    A_0=cpu["A_0"])
    check(y, ref.to(dtype), tol)


def test_empty_sequence_returns_the_initial_state():
    p = layer(2, 0, 8, 16, 4)
    y, last = dense_ssm_sequential(p["x"], p["A_k"], p["W_B"], p["W_C"], p["D"], "linear",
                                   p["h0"], True, p["A_0"])
    assert y.shape == (2, 0, 8)
    torch.testing.assert_close(last, p["h0"])


def test_plan_on_meta_tensors():
    """The plan AOT compiles: one program per (block group, batch row), A_k of the group in
    registers (BLOCK_K = K rounded up), or the transitions streamed (GIVEN)."""
    meta = dict(device="meta")
    b, L, K, nb, bs = 8, 4096, 32, 4, 4
    u = torch.empty(b, L, nb * bs, **meta)
    x = torch.empty(b, L, K, dtype=torch.bfloat16, **meta)
    plan = plan_dense_scan(u, x=x, A_k=torch.empty(K, nb, bs, bs, **meta),
                           A0=torch.empty(nb, bs, bs, **meta),
                           config=DenseSequentialConfig(block_nb=2))
    (launch,) = plan.launches
    assert launch.grid == (2, b)
    assert launch.constexprs == {"BLOCK_NB": 2, "BS": 4, "BLOCK_K": 32, "GIVEN": False,
                                 "HAS_H0": False}
    assert plan.outputs[0].shape == (b, L, nb * bs) and plan.outputs[0].dtype == torch.float32
    plan = plan_dense_scan(u, A=torch.empty(b, L, nb, bs, bs, **meta))
    assert plan.launches[0].grid == (nb, b) and plan.launches[0].constexprs["GIVEN"]


@pytest.mark.parametrize("kw,name", [
    (dict(u=torch.randn(2, 3)), "u"),
    (dict(x=torch.randn(2, 3, 5)), "x"),
    (dict(A_k=torch.randn(4, 2, 2, 3)), "A_k"),
    (dict(A0=torch.randn(2, 2, 3)), "A0"),
    (dict(x=None), "x"),
    (dict(A=torch.randn(2, 3, 2, 2, 3)), "A"),
    (dict(A=torch.randn(2, 4, 2, 2, 2)), "A"),
    (dict(initial_state=torch.randn(2, 5)), "initial_state"),
])
def test_bad_arguments_name_the_argument(kw, name):
    args = dict(u=torch.randn(2, 3, 4), x=torch.randn(2, 3, 4), A_k=torch.randn(4, 2, 2, 2),
                A0=torch.randn(2, 2, 2))
    args.update(kw)
    if "A" in kw:  # A replaces the operands it is built from
        args = dict(u=args["u"], A=kw["A"])
    args = {k: (v.to(DEV) if isinstance(v, torch.Tensor) else v) for k, v in args.items()}
    with pytest.raises(ValueError, match=rf"^{name}\b"):
        plan_dense_scan(**args)


# ---- a compiled linear CDE for a GPU target -------------------------------------------------

@pytest.fixture(scope="module")
def lcde_sm90():
    model, ref = compiled_with_reference("lcde", "sm_90", seed=3, seqlen=256)
    return model.eval(), ref.eval()


@pytest.mark.skipif(not interpreting(), reason="the interpreter runs CPU tensors")
@pytest.mark.parametrize("L", [1, 7, 100])
def test_compiled_lcde_for_sm90_runs_the_kernel(lcde_sm90, L, tol, monkeypatch):
    from ssmc.codegen.triton.dense import sequential

    model, ref = lcde_sm90
    assert model.kernels == {"cde": "triton:selective_ssm/dense/sequential"}
    plans, real = [], sequential.plan_dense_scan

    def spy(*a, **k):
        plans.append(real(*a, **k))
        return plans[-1]

    monkeypatch.setattr(sequential, "plan_dense_scan", spy)
    x = torch.randn(2, L, 8)
    with torch.no_grad():
        check(model(x), ref(x), tol)
    (plan,) = plans
    assert not plan.launches[0].constexprs["GIVEN"]  # lcde's A_k (32 x 4 x 4 x 4) is built in


@pytest.mark.skipif(not interpreting(), reason="the interpreter runs CPU tensors")
def test_compiled_lcde_gradients_match_the_reference(lcde_sm90):
    """With gradients the Triton scan runs with its adjoint backward (dense/backward.py,
    counted in test_triton_dense_bwd.py): the oracle's gradients."""
    model, ref = lcde_sm90
    x = torch.randn(2, 9, 8)
    for m in (model, ref):
        m.zero_grad(set_to_none=True)
        m(x).square().mean().backward()
    for (name, p), q in zip(model.named_parameters(), ref.parameters()):
        assert p.grad is not None, name
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6)
