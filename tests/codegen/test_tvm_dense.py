"""The dense / block-diagonal selective SSM: the TVM CPU scan (A(x_t) built in the kernel) and the
torch matrix-combine scan (ssmc.codegen.composite.dense) against ssmc.semantics.dense; the
compiled lcde model."""

from __future__ import annotations

import pytest
import torch

import ssmc
from ssmc import costmodel as cm
from ssmc.codegen.composite.dense import assoc_scan, dense_ssm_fast
from ssmc.codegen.tvm.dense_scan import dense_scan
from ssmc.paths import zoo_dir
from ssmc.semantics.dense import dense_scan_ref, dense_ssm, dense_transitions
from ssmc.semantics.model import build_reference
from ssmc.semantics.modules_ssm import DenseSSM

FP32 = dict(rtol=6e-4, atol=2e-3)


def _problem(b, L, K, nb, bs, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, L, K, generator=g)
    A_k = torch.randn(K, nb, bs, bs, generator=g) * 0.2 / (K * bs) ** 0.5
    A_0 = -0.1 * torch.eye(bs).expand(nb, bs, bs).contiguous()
    u = torch.randn(b, L, nb * bs, generator=g)
    h0 = torch.randn(b, nb * bs, generator=g)
    return x, A_k, A_0, u, h0


@pytest.mark.parametrize("L", [1, 7, 100, 1000])
@pytest.mark.parametrize("K,nb,bs", [(8, 4, 4), (5, 2, 3), (37, 1, 16), (3, 6, 1)])
def test_kernel_scan_matches_oracle(L, K, nb, bs):
    x, A_k, A_0, u, h0 = _problem(2, L, K, nb, bs)
    A = dense_transitions(x, A_k, "linear", A_0)
    for init in (None, h0):
        want = dense_scan_ref(A, u.reshape(2, L, nb, bs),
                              None if init is None else init.reshape(2, nb, bs))
        got = dense_scan(u, x=x, A_k=A_k, A0=A_0 + torch.eye(bs), initial_state=init)
        torch.testing.assert_close(got, want.reshape(2, L, nb * bs), **FP32)
        got = dense_scan(u, A=A, initial_state=init)  # transitions given (the expm form)
        torch.testing.assert_close(got, want.reshape(2, L, nb * bs), **FP32)


@pytest.mark.parametrize("L", [1, 7, 100])
def test_assoc_scan_matches_oracle(L):
    x, A_k, A_0, u, _ = _problem(3, L, 4, 2, 3)
    A = dense_transitions(x, A_k, "linear", A_0)
    want = dense_scan_ref(A, u.reshape(3, L, 2, 3))
    torch.testing.assert_close(assoc_scan(A, u.reshape(3, L, 2, 3)), want, **FP32)


@pytest.mark.parametrize("mode", ["linear", "expm"])
@pytest.mark.parametrize("algorithm", ["sequential", "associative", "chunked"])
@pytest.mark.parametrize("L,N,bs", [(1, 8, 4), (7, 8, 2), (100, 6, 3), (1000, 16, 16), (0, 4, 2)])
def test_layer_matches_oracle(mode, algorithm, L, N, bs):
    if L == 1000 and (algorithm != "sequential" or mode == "expm"):
        pytest.skip("covered at shorter lengths (cheap tier)")
    torch.manual_seed(L + N)
    m = DenseSSM(12, N, block_size=bs, transition=mode)
    x, h0 = torch.randn(2, L, 12), torch.randn(2, N)
    with torch.no_grad():
        want, want_last = dense_ssm(x, m.A_k, m.B_proj, m.C_proj, m.D, mode, "sequential", h0,
                                    True, A_0=m.A_0)
        got, last = dense_ssm_fast(x, m.A_k, m.B_proj, m.C_proj, m.D, mode, algorithm, h0, True,
                                   A_0=m.A_0)
        torch.testing.assert_close(got, want, **FP32)
        torch.testing.assert_close(last, want_last, **FP32)
        y = dense_ssm_fast(x, m.A_k, m.B_proj, m.C_proj, None, mode, algorithm, A_0=m.A_0)
        torch.testing.assert_close(y, dense_ssm(x, m.A_k, m.B_proj, m.C_proj, None, mode,
                                                A_0=m.A_0), **FP32)


@pytest.mark.parametrize("L,chunk", [(1, 4), (7, 3), (100, 7), (100, 25), (300, 1000)])
def test_chunked_scan_chunk_sizes(L, chunk):
    """Chunks that divide L and that do not (the last one zero-padded), one step, longer than L."""
    torch.manual_seed(L)
    m = DenseSSM(5, 6, block_size=3)
    x, h0 = torch.randn(2, L, 5), torch.randn(2, 6)
    with torch.no_grad():
        want = dense_ssm(x, m.A_k, m.B_proj, m.C_proj, m.D, "linear", "sequential", h0, True,
                         A_0=m.A_0)
        got = dense_ssm_fast(x, m.A_k, m.B_proj, m.C_proj, m.D, "linear", "chunked", h0, True,
                             A_0=m.A_0, chunk=chunk)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, **FP32)


def test_associative_gradients_match_oracle():
    torch.manual_seed(0)
    m = DenseSSM(5, 6, block_size=3).double()
    x = torch.randn(2, 9, 5, dtype=torch.float64, requires_grad=True)
    args = (m.A_k, m.B_proj, m.C_proj, m.D)
    g1 = torch.autograd.grad(dense_ssm_fast(x, *args, "linear", "associative", A_0=m.A_0).sum(),
                             [x, m.A_k, m.A_0])
    g2 = torch.autograd.grad(dense_ssm(x, *args, "linear", A_0=m.A_0).sum(), [x, m.A_k, m.A_0])
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)


def test_fp16_returns_input_dtype():
    m = DenseSSM(8, 8, block_size=4)
    x = torch.randn(2, 17, 8)
    with torch.no_grad():
        got = dense_ssm_fast(x.half(), m.A_k, m.B_proj, m.C_proj, m.D, A_0=m.A_0)
        want = dense_ssm(x.half(), m.A_k, m.B_proj, m.C_proj, m.D, A_0=m.A_0)
    assert got.dtype == torch.float16
    torch.testing.assert_close(got.float(), want.float(), rtol=3e-3, atol=5e-3)


@pytest.mark.parametrize("call,name", [
    (lambda p: dense_scan(p["u"], x=p["x"], A_k=p["A_k"], A0=p["A0"][:1]), "A0"),
    (lambda p: dense_scan(p["u"][..., :3], x=p["x"], A_k=p["A_k"], A0=p["A0"]), "u"),
    (lambda p: dense_scan(p["u"], x=p["x"][..., :2], A_k=p["A_k"], A0=p["A0"]), "x"),
    (lambda p: dense_scan(p["u"], x=p["x"], A_k=p["A_k"], A0=p["A0"],
                          initial_state=p["u"][:, 0, :3]), "initial_state"),
    (lambda p: dense_scan(p["u"], A=p["A_k"]), "A"),
    (lambda p: dense_scan(p["u"], x=p["x"]), "A_k"),
    (lambda p: dense_ssm_fast(p["x"], p["A_k"], p["W_B"], p["W_C"], algorithm="blocked"),
     "algorithm"),
    (lambda p: dense_ssm_fast(p["x"], p["A_k"], p["W_B"], p["W_C"], algorithm="chunked",
                              chunk=0), "chunk"),
    (lambda p: dense_ssm_fast(p["x"], p["A_k"], p["W_B"], p["W_C"], mode="cayley"), "mode"),
    (lambda p: dense_ssm_fast(p["x"], p["A_k"], p["W_B"][:3], p["W_C"]), "W_B"),
    (lambda p: dense_ssm_fast(p["x"], p["A_k"][:2], p["W_B"], p["W_C"]), "A_k"),
    (lambda p: dense_ssm_fast(p["x"], p["A_k"], p["W_B"], p["W_C"], D=p["x"][0, 0, :2]), "D"),
])
def test_bad_arguments_name_the_argument(call, name):
    x, A_k, A_0, u, _ = _problem(2, 5, 4, 2, 2)
    p = dict(x=x, A_k=A_k, A0=A_0, u=u, W_B=torch.randn(4, 4), W_C=torch.randn(4, 4))
    with pytest.raises(ValueError, match=name):
        call(p)


def test_cost_model_picks_sequential_on_the_cpu_and_parallel_on_a_gpu():
    from ssmc.targets import load_target

    def best(target, L, N, bs):
        t = load_target(target)
        return min(("sequential", "associative", "chunked"),
                   key=lambda a: cm.estimate(cm.selective_dense(2, L, 32, N, bs, a), t, a).time_us)

    assert best("cpu", 4096, 16, 4) == "sequential"
    assert best("cpu", 4096, 16, 16) == "sequential"
    assert best("sm_90", 4096, 16, 4) == "associative"


@pytest.fixture(scope="module")
def lcde_cpu():
    torch.manual_seed(3)
    return ssmc.compile(zoo_dir() / "lcde.yaml", "cpu", seqlen=256).eval()


def test_lcde_runs_on_the_dense_kernel(lcde_cpu):
    assert lcde_cpu.kernels == {"cde": "tvm:selective_ssm/dense/sequential"}
    assert "tvm:selective_ssm/dense/sequential" in lcde_cpu.summary()


@pytest.mark.parametrize("L", [1, 7, 100])
def test_lcde_matches_reference(lcde_cpu, L):
    ref = build_reference(lcde_cpu.source_graph).eval()
    ref.load_state_dict(lcde_cpu.state_dict())
    x = torch.randn(2, L, 8)
    with torch.no_grad():
        torch.testing.assert_close(lcde_cpu(x), ref(x), **FP32)
    # with gradients the TVM scan and its adjoint kernel run: the same gradients as the oracle's
    lcde_cpu.zero_grad(set_to_none=True)
    lcde_cpu(x).square().mean().backward()
    ref(x).square().mean().backward()
    grads = dict(ref.named_parameters())
    for name, p in lcde_cpu.named_parameters():
        got = p.grad if p.grad is not None else torch.zeros_like(p)  # L = 1 never uses A_0
        torch.testing.assert_close(got, grads[name].grad, rtol=1e-4, atol=1e-6, msg=name)
    lcde_cpu.zero_grad(set_to_none=True)
