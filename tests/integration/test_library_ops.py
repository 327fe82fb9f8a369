"""The ssmc:: operators: torch.library.opcheck (schema, fake tensors, autograd registration,
AOT dispatch), shapes on meta / fake tensors through the public functions, and the Triton
`triton_op`s (run here through the interpreter: tiny shapes)."""

from __future__ import annotations

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from ssmc.ops import mamba_chunk_scan_combined, selective_scan_fn
from ssmc.runtime import library as lib

META = torch.device("meta")


def _scan_args(layout="bld", cplx=False, b=2, d=4, L=9, N=3, g=2, grad=False):
    gen = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=gen)  # noqa: E731
    seq = (b, L, d) if layout == "bld" else (b, d, L)
    A = -torch.rand(d, N, generator=gen) - 0.1
    if cplx:
        A = torch.complex(A, r(d, N))
    bc = (b, L, g, N) if layout == "bld" else (b, g, N, L)
    h0 = r(b, d, N).to(torch.complex64) if cplx else r(b, d, N)
    ts = [r(*seq), 0.5 * r(*seq), A, r(*bc), r(*bc), r(d), r(*seq), r(d), h0]
    return [t.requires_grad_(grad) for t in ts]


OPCHECK_SCAN = [("tvm", "bld", False, False), ("tvm", "bdl", False, True),
                ("torch", "bld", False, True), ("torch", "bld", True, True)]


@pytest.mark.parametrize("backend,layout,cplx,grad", OPCHECK_SCAN,
                         ids=["-".join(map(str, c)) for c in OPCHECK_SCAN])
def test_opcheck_selective_scan(backend, layout, cplx, grad):
    args = _scan_args(layout, cplx, grad=grad)
    K = 4 if grad else 0
    torch.library.opcheck(torch.ops.ssmc.selective_scan.default,
                          (*args, True, True, layout, True, K, backend, "", ""))


def test_opcheck_selective_scan_optional_inputs_absent():
    u, delta, A, B, C, *_ = _scan_args(grad=True)
    torch.library.opcheck(torch.ops.ssmc.selective_scan.default,
                          (u, delta, A, B, C, None, None, None, None, False, True, "bld", False,
                           4, "auto", "", ""))


def test_opcheck_selective_scan_bwd():
    args = _scan_args()
    gy = torch.randn_like(args[0])
    gl = torch.randn_like(args[-1])
    torch.library.opcheck(torch.ops.ssmc.selective_scan_bwd.default,
                          (gy, gl, *args, None, True, False, "bld", 4))


@pytest.mark.parametrize("backend,layout,match", [
    ("bogus", "bld", "^backend: expected one of auto, tvm, triton, torch, reference, got 'bogus'"),
    ("torch", "xyz", "^layout: expected 'bld' or 'bdl', got 'xyz'"),
    ("auto", "BLD", "^layout: "),
], ids=["backend", "layout", "layout-case"])
def test_selective_scan_op_refuses_unknown_strings(backend, layout, match):
    """torch.library checks the ops' argument types only: a typo in a string must not run
    another engine or read the tensors transposed, on real or on meta tensors."""
    args = _scan_args()
    for ts in (args, [t.to(META) for t in args]):
        with pytest.raises(ValueError, match=match):
            torch.ops.ssmc.selective_scan(*ts, True, True, layout, True, 0, backend, "", "")


def _ssd_args(grad=False, b=2, L=10, h=2, p=3, g=1, n=4):
    gen = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=gen)  # noqa: E731
    ts = [r(b, L, h, p), r(b, L, h), -torch.rand(h, generator=gen) - 0.1, r(b, L, g, n),
          r(b, L, g, n), r(h), r(b, L, h, p), r(h), r(b, h, p, n)]
    return [t.requires_grad_(grad) for t in ts]


@pytest.mark.parametrize("grad", [False, True])
def test_opcheck_ssd(grad):
    seq_idx = torch.tensor([[0] * 4 + [1] * 6] * 2)
    torch.library.opcheck(torch.ops.ssmc.ssd.default,
                          (*_ssd_args(grad), seq_idx, 4, True, 0.0, float("inf"), True,
                           4 if grad else 0, "auto", ""))


def test_ssd_op_refuses_an_unknown_backend():
    seq_idx = torch.zeros(2, 10, dtype=torch.long)
    for ts in (_ssd_args(), [t.to(META) for t in _ssd_args()]):
        with pytest.raises(ValueError, match="backend: expected one of"):
            torch.ops.ssmc.ssd(*ts, seq_idx.to(ts[0].device), 4, True, 0.0, float("inf"), True,
                               0, "tvmm", "")


def test_opcheck_ssd_bwd():
    args = _ssd_args()
    gy = torch.randn_like(args[0])
    torch.library.opcheck(torch.ops.ssmc.ssd_bwd.default,
                          (gy, None, *args, None, None, True, 0.1, 2.0, 4))


# ---- shapes without data ------------------------------------------------------------------------

def test_meta_tensors_through_the_public_functions():
    b, d, L, N = 2, 6, 11, 4
    m = lambda *s: torch.empty(*s, device=META)  # noqa: E731
    y, last = selective_scan_fn(m(b, d, L), m(b, d, L), m(d, N), m(b, N, L), m(b, N, L),
                                D=m(d), z=m(b, d, L), delta_bias=m(d), delta_softplus=True,
                                return_last_state=True)
    assert y.device.type == "meta" and y.shape == (b, d, L) and last.shape == (b, d, N)
    y2 = selective_scan_fn(m(b, d, L), m(b, d, L), torch.empty(d, N, device=META,
                                                                dtype=torch.complex64),
                           m(b, 2, N, L), m(b, 2, N, L))
    assert y2.shape == (b, d, L)
    x = m(b, L, 3, 5)
    y, final = mamba_chunk_scan_combined(x, m(b, L, 3), m(3), m(b, L, 1, 7), m(b, L, 1, 7),
                                         chunk_size=4, D=m(3), return_final_states=True)
    assert y.shape == (b, L, 3, 5) and final.shape == (b, 3, 5, 7)


def test_meta_checkpoint_and_state_dtypes():
    b, d, L, N = 2, 6, 11, 4
    m = lambda *s, dt=torch.float32: torch.empty(*s, device=META, dtype=dt)  # noqa: E731
    y, last, ck = torch.ops.ssmc.selective_scan(
        m(b, L, d, dt=torch.bfloat16), m(b, L, d, dt=torch.bfloat16), m(d, N, dt=torch.complex64),
        m(b, L, 1, N), m(b, L, 1, N), None, None, None, None, True, True, "bld", True, 4, "auto",
        "", "")
    assert y.dtype == torch.bfloat16 and y.shape == (b, L, d)
    assert last.dtype == torch.complex64 and last.shape == (b, d, N)
    assert ck.shape == (b, 3, d, N) and ck.dtype == torch.complex64  # ceil(11 / 4) checkpoints
    y, last, ck = torch.ops.ssmc.selective_scan(
        m(b, d, L, dt=torch.float64), m(b, d, L, dt=torch.float64), m(d, N, dt=torch.float64),
        m(d, N, dt=torch.float64), m(d, N, dt=torch.float64), None, None, None, None, False,
        True, "bdl", False, 0, "auto", "", "")
    assert y.shape == (b, d, L) and last.numel() == 0 and ck.shape == (b, 0, d, N)
    assert ck.dtype == torch.float64


def test_fake_tensor_mode_shapes_and_grads():
    with FakeTensorMode():
        args = [t.detach().clone().requires_grad_() for t in _scan_args()]
        y, last = lib.selective_scan(*args[:5], D=args[5], z=args[6], delta_bias=args[7],
                                     initial_state=args[8], delta_softplus=True,
                                     return_last_state=True)
        assert y.shape == args[0].shape and last.shape == args[8].shape
        (y.sum() + last.sum()).backward()
        assert all(a.grad is not None and a.grad.shape == a.shape for a in args)
        sargs = [t.detach().clone().requires_grad_() for t in _ssd_args()]
        y = lib.ssd(*sargs[:5], chunk_size=4, D=sargs[5], z=sargs[6], dt_bias=sargs[7],
                    initial_states=sargs[8], dt_softplus=True)
        assert y.shape == sargs[0].shape
        y.sum().backward()
        assert all(a.grad.shape == a.shape for a in sargs)


# ---- Triton triton_ops (interpreter) ----------------------------------------------------------

def test_triton_ops_match_the_torch_engine():
    lib.register_triton_ops()
    args = _scan_args(b=1, d=4, L=6, N=2)
    y1, l1, c1 = torch.ops.ssmc.selective_scan_triton(*args, True, False, "bld", True, 4,
                                                      "triton", "", "")
    y2, l2, c2 = torch.ops.ssmc.selective_scan(*args, True, False, "bld", True, 4, "torch", "",
                                               "")
    for a, b in ((y1, y2), (l1, l2), (c1, c2)):
        torch.testing.assert_close(a, b, rtol=6e-4, atol=2e-3)
    sargs = _ssd_args(b=1, L=5, h=2, p=2, n=2)
    y1, f1, _ = torch.ops.ssmc.ssd_triton(*sargs, None, 16, True, 0.0, float("inf"), True, 0,
                                          "triton", "")
    y2, f2, _ = torch.ops.ssmc.ssd(*sargs, None, 16, True, 0.0, float("inf"), True, 0, "torch",
                                   "")
    torch.testing.assert_close(y1, y2, rtol=6e-4, atol=2e-3)
    torch.testing.assert_close(f1, f2, rtol=6e-4, atol=2e-3)


def test_opcheck_triton_ops_interpreter():
    lib.register_triton_ops()
    args = _scan_args(b=1, d=4, L=5, N=2, grad=True)
    torch.library.opcheck(torch.ops.ssmc.selective_scan_triton.default,
                          (*args, True, False, "bld", True, 2, "triton", "", ""))
    sargs = _ssd_args(grad=True, b=1, L=5, h=2, p=2, n=2)
    torch.library.opcheck(torch.ops.ssmc.ssd_triton.default,
                          (*sargs, None, 16, True, 0.0, float("inf"), True, 4, "triton", ""))


def test_triton_op_gradients_interpreter():
    lib.register_triton_ops()
    args = [t.detach().requires_grad_() for t in _scan_args(b=1, d=4, L=5, N=2)]
    y, _, _ = torch.ops.ssmc.selective_scan_triton(*args, True, False, "bld", False, 2,
                                                   "triton", "", "")
    y.sum().backward()
    ref = [t.detach().clone().requires_grad_() for t in args]
    lib.selective_scan(*ref[:5], D=ref[5], z=ref[6], delta_bias=ref[7], initial_state=ref[8],
                       delta_softplus=True, conj_pair=False, backend="torch").sum().backward()
    for a, b in zip(args, ref):
        torch.testing.assert_close(a.grad, b.grad, rtol=6e-4, atol=2e-3)


def test_ssd_op_runs_a_registered_tvm_kernel(monkeypatch):
    """ssmc::ssd on the CPU takes the TVM SSD kernel once dispatch registers one (the torch
    engine until then), chunk by chunk with checkpoints when training."""
    from ssmc.runtime import dispatch

    monkeypatch.setitem(dispatch.KERNELS, ("selective_ssm/ssd", "sequential", "tvm"),
                        "ssmc.codegen.tvm.ssd:ssd_scan")
    args = _ssd_args(L=9, h=2, p=8, g=1, n=4)
    seq_idx = torch.tensor([[0] * 5 + [1] * 4] * 2)
    for K in (0, 4):
        got = torch.ops.ssmc.ssd(*args, seq_idx, 64, True, 0.0, float("inf"), True, K, "tvm", "")
        want = torch.ops.ssmc.ssd(*args, seq_idx, 64, True, 0.0, float("inf"), True, K, "torch",
                                  "")
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, rtol=6e-4, atol=2e-3)
