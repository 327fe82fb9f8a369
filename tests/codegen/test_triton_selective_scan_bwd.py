"""The Triton backward of the real-A Mamba-1 selective scan
(ssmc.codegen.triton.selective_scan.backward), through the interpreter, against autograd through
the oracle ssmc.semantics.selective.selective_scan_ref: the gradients of u, delta, A, B, C, D,
z, delta_bias and the initial state (with a gradient of the last state too), at L in
{1, 7, 64, 200}, both layouts, time-invariant / one-group / grouped B and C, with and without z,
D, bias and softplus, fp16/bf16 inputs; and its registration behind
torch.ops.ssmc.selective_scan_bwd.

Shapes are tiny (the interpreter costs ~20 ms per program-step here) and the configs small, so
that they still span several channel blocks (one ragged), chunks (one ragged) and groups."""

from __future__ import annotations

import pytest
import torch

from ssmc.codegen.triton.common import interpreting
from ssmc.codegen.triton.selective_scan import backward as sbw
from ssmc.runtime import library as lib
from ssmc.semantics.selective import selective_scan_ref

NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias", "initial_state")


def make(b, d, L, N, *, bc="g2", D=True, z=True, bias=True, h0=True, dtype=torch.float32,
         seed=0):
    """Inputs in mamba-ssm's layout ('bdl'): like a trained Mamba's (A = -(1..N) scaled, dt
    around softplus's range).  bc: 'ti' (d, N), or 'g<k>' (b, k, N, L); 'ti/g2' mixes."""
    gen = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=gen)  # noqa: E731
    kb, kc = bc.split("/") if "/" in bc else (bc, bc)

    def operand(kind):
        return r(d, N) if kind == "ti" else r(b, int(kind[1:]), N, L).to(dtype)

    A = -torch.arange(1, N + 1, dtype=torch.float32).repeat(d, 1) \
        * (0.5 + torch.rand(d, 1, generator=gen))
    return dict(u=r(b, d, L).to(dtype), delta=(r(b, d, L) * 0.5 - 1.0).to(dtype), A=A,
                B=operand(kb), C=operand(kc), D=r(d) if D else None,
                z=r(b, d, L).to(dtype) if z else None,
                delta_bias=r(d) * 0.1 if bias else None,
                initial_state=r(b, d, N) if h0 else None)


def reference_grads(inp, gy, glast, softplus):
    """Autograd through the oracle (fp32 compute, grads in each input's dtype)."""
    leaves = {k: (v.detach().clone().requires_grad_() if v is not None else None)
              for k, v in inp.items()}
    y, last = selective_scan_ref(**leaves, delta_softplus=softplus, return_last_state=True)
    outs, grads = [y], [gy]
    if glast is not None:
        outs.append(last)
        grads.append(glast)
    torch.autograd.backward(outs, grads)
    return {k: (v.grad if v is not None else None) for k, v in leaves.items()}


def to_layout(inp, layout):
    """'bdl' inputs -> the op's layout: 'bld' sequences (b, L, d), B/C (b, L, g, N)."""
    if layout == "bdl":
        return dict(inp)
    out = dict(inp)
    for k in ("u", "delta", "z"):
        if inp[k] is not None:
            out[k] = inp[k].transpose(1, 2).contiguous()
    for k in ("B", "C"):
        if inp[k].dim() == 4:
            out[k] = inp[k].permute(0, 3, 1, 2).contiguous()
    return out


def from_layout(grads, layout):
    if layout == "bdl":
        return grads
    out = dict(grads)
    for k in ("u", "delta", "z"):
        if grads[k] is not None and grads[k].numel():
            out[k] = grads[k].transpose(1, 2)
    for k in ("B", "C"):
        if grads[k].dim() == 4:
            out[k] = grads[k].permute(0, 2, 3, 1)
    return out


def run_kernel(inp, gy, glast, softplus, *, layout="bdl", K=0, checkpoints=False,
               config='{"block_d": 2}'):
    """The Triton backward on `inp` ('bdl'), in `layout`; checkpoints: take the forward's
    (the torch engine's, every K steps) instead of recomputing them."""
    ops = to_layout(inp, layout)
    g = gy if layout == "bdl" else gy.transpose(1, 2).contiguous()
    ck = None
    if checkpoints:
        _, _, ck = lib.selective_scan_op(**ops, delta_softplus=softplus, conj_pair=True,
                                         layout=layout, return_last_state=False,
                                         checkpoint_every=K, backend="torch", algorithm="",
                                         config="")
    out = sbw.selective_scan_bwd_triton(g, glast, ops["u"], ops["delta"], ops["A"], ops["B"],
                                        ops["C"], ops["D"], ops["z"], ops["delta_bias"],
                                        ops["initial_state"], ck, softplus, layout, K, config)
    return from_layout(dict(zip(NAMES, out)), layout)


def check(ours, ref, tol, names=NAMES):
    for k in names:
        if ref[k] is None:
            assert ours[k].numel() == 0, k
            continue
        assert ours[k].shape == ref[k].shape and ours[k].dtype == ref[k].dtype, k
        assert not torch.isnan(ours[k].float()).any(), k
        torch.testing.assert_close(ours[k], ref[k], **tol[ref[k].dtype], msg=lambda m: f"{k}: {m}")


def grads_out(inp, seed=1):
    gen = torch.Generator().manual_seed(seed)
    b, d, L = inp["u"].shape
    N = inp["A"].shape[1]
    gy = torch.randn(b, d, L, generator=gen).to(inp["u"].dtype)
    glast = torch.randn(b, d, N, generator=gen)
    return gy, glast


# (L, K: steps per chunk (0: the library's default), forward checkpoints or recomputed)
LENGTHS = {
    "L1": (1, 0, False),
    "L7-K3": (7, 3, False),        # chunks of 3, 3, 1
    "L7-K16-ckpt": (7, 16, True),  # one chunk shorter than K
    "L64-K16-ckpt": (64, 16, True),
    "L200-K64": (200, 64, False),  # a ragged last chunk of 8
}


@pytest.mark.parametrize("case", list(LENGTHS))
def test_fp32_lengths(case, tol):
    """Grouped B/C (2 groups of 2 channels, blocks of 2), every optional input, softplus."""
    L, K, ck = LENGTHS[case]
    inp = make(1, 4, L, 4)
    gy, glast = grads_out(inp)
    ref = reference_grads(inp, gy, glast, True)
    check(run_kernel(inp, gy, glast, True, K=K, checkpoints=ck), ref, tol)


VARIANTS = {
    # id: (make options, softplus, layout, config)
    "invariant-bld": (dict(bc="ti"), True, "bld", '{"block_d": 4}'),
    "one-group-ragged-block": (dict(bc="g1"), True, "bdl", '{"block_d": 4}'),
    "mixed-ti-B-grouped-C-bld": (dict(bc="ti/g3"), False, "bld", '{"block_d": 4}'),
    "bare": (dict(D=False, z=False, bias=False, h0=False), False, "bdl", '{"block_d": 2}'),
    "no-z-with-D": (dict(z=False, bc="g6"), True, "bdl", '{"block_d": 8}'),  # block_d -> 1
    "default-config": (dict(bc="g2"), True, "bld", ""),
}


@pytest.mark.parametrize("case", list(VARIANTS))
def test_fp32_variants(case, tol):
    opts, softplus, layout, config = VARIANTS[case]
    inp = make(2, 6, 7, 4, **opts)
    gy, glast = grads_out(inp)
    ref = reference_grads(inp, gy, glast, softplus)
    check(run_kernel(inp, gy, glast, softplus, layout=layout, K=3, config=config), ref, tol)


def test_without_last_state_gradient(tol):
    inp = make(1, 4, 7, 4)
    gy, _ = grads_out(inp)
    ref = reference_grads(inp, gy, None, True)
    check(run_kernel(inp, gy, None, True, K=4), ref, tol)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_half_inputs(dtype, tol):
    """fp16/bf16 u, delta, z, B, C (fp32 A, D, bias, state): fp32 compute, gradients in each
    input's dtype, at that dtype's tolerance."""
    inp = make(1, 4, 7, 4, dtype=dtype)
    gy, glast = grads_out(inp)
    ref = reference_grads(inp, gy, glast, True)
    ours = run_kernel(inp, gy, glast, True, K=4, layout="bld")
    for k in ("u", "delta", "z", "B", "C"):
        assert ours[k].dtype == dtype
    check(ours, ref, tol)


def test_declines_complex_and_float64():
    base = make(1, 2, 3, 2)
    kw = dict(grad_y=torch.randn(1, 2, 3), grad_last=None, checkpoints=None,
              delta_softplus=True, conj_pair=True, layout="bdl", checkpoint_every=0)
    cplx = dict(base, A=torch.complex(base["A"], torch.randn(2, 2)))
    assert sbw.selective_scan_backward(**kw, **cplx) is NotImplemented
    wide = {k: (v.double() if v is not None else None) for k, v in base.items()}
    assert sbw.selective_scan_backward(**dict(kw, grad_y=kw["grad_y"].double()),
                                       **wide) is NotImplemented


def test_checkpoints_used_when_they_match():
    """The forward's checkpoints are taken when there are ceil(L / K) of them (one when K > L);
    otherwise (or without them) the kernel recomputes them."""
    inp = make(1, 4, 10, 4)
    gy, _ = grads_out(inp)

    def problem(ck, K):
        return sbw.backward_problem(gy, None, inp["u"], inp["delta"], inp["A"], inp["B"],
                                    inp["C"], None, None, None, None, ck, True, "bdl", K)

    assert problem(torch.zeros(1, 3, 4, 4), 4).checkpoints is not None
    p = problem(torch.zeros(1, 1, 4, 4), 16)
    assert p.checkpoints is not None and p.chunk == 10
    assert problem(torch.zeros(1, 2, 4, 4), 4).checkpoints is None  # a different K
    assert problem(None, 4).checkpoints is None
    assert problem(torch.zeros(1, 3, 4, 4), 0).checkpoints is None


def test_registered_for_cuda():
    assert lib._BACKWARD[("selective_scan", "cuda")] is lib.selective_scan_backward_triton


@pytest.mark.parametrize("layout", ["bld", "bdl"])
def test_through_the_op_and_autograd(monkeypatch, layout, tol):
    """The library's differentiable selective_scan with the Triton backward registered for this
    device (the CPU here, under the interpreter): forward on the torch engine with checkpoints,
    backward through ssmc::selective_scan_bwd -> this kernel (spied), gradients as the
    oracle's; the complex-A call declines to the torch engine."""
    assert interpreting()
    calls = []
    real = sbw.selective_scan_bwd_triton

    def spy(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(sbw, "selective_scan_bwd_triton", spy)
    monkeypatch.setattr(sbw, "_OP", [spy])  # the triton_op is defined once, around the original
    monkeypatch.setitem(lib._BACKWARD, ("selective_scan", "cpu"),
                        lib.selective_scan_backward_triton)
    inp = make(1, 4, 9, 4)
    gy, glast = grads_out(inp)
    ref = reference_grads(inp, gy, glast, True)
    ops = to_layout(inp, layout)
    leaves = {k: (v.clone().requires_grad_() if v is not None else None) for k, v in ops.items()}
    y, last = lib.selective_scan(**leaves, delta_softplus=True, layout=layout,
                                 return_last_state=True, backend="torch", checkpoint_every=4)
    g = gy if layout == "bdl" else gy.transpose(1, 2)
    torch.autograd.backward([y, last], [g, glast])
    assert calls == [1]
    ours = from_layout({k: (v.grad if v is not None else None) for k, v in leaves.items()},
                       layout)
    check(ours, ref, tol)

    cplx = dict(make(1, 2, 3, 2, bc="ti", z=False, h0=False))
    cplx["A"] = torch.complex(cplx["A"], torch.ones(2, 2)).requires_grad_()
    y = lib.selective_scan(**cplx, layout="bdl", backend="torch", checkpoint_every=2)
    y.sum().backward()
    assert calls == [1] and cplx["A"].grad is not None


def test_triton_op_is_registered():
    op = sbw.triton_bwd_op()
    assert op is sbw.triton_bwd_op()
    assert hasattr(torch.ops.ssmc, "selective_scan_bwd_triton")


# ------------------------------------------------------------------ real GPU

def _gpu(fn):
    fn = pytest.mark.skipif(interpreting(), reason="TRITON_INTERPRET=1: set SSMC_GPU_TESTS=1")(fn)
    fn = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA/ROCm device")(fn)
    return pytest.mark.gpu(fn)


@_gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("L", [1000, 4097])
@pytest.mark.parametrize("ckpt", [True, False], ids=["ckpt", "recompute"])
def test_gpu_against_torch_engine(dtype, L, ckpt, tol):
    """Realistic sizes on a device: the kernel against the torch reverse scan (same math, fp32),
    with the forward's checkpoints and recomputing them."""
    b, d, N, K = 2, 256, 16, 64
    inp = {k: (v.cuda() if v is not None else None)
           for k, v in make(b, d, L, N, bc="g2", dtype=dtype).items()}
    gy, glast = (t.cuda() for t in grads_out(inp))
    ck = None
    if ckpt:
        _, _, ck = lib.selective_scan_op(**inp, delta_softplus=True, conj_pair=True,
                                         layout="bdl", return_last_state=False,
                                         checkpoint_every=K, backend="torch", algorithm="",
                                         config="")
    kw = dict(grad_y=gy, grad_last=glast, **inp, checkpoints=ck, delta_softplus=True,
              conj_pair=True, layout="bdl", checkpoint_every=K)
    ours = dict(zip(NAMES, sbw.selective_scan_backward(**kw)))
    ref = dict(zip(NAMES, lib.selective_scan_backward_torch(**kw)))
    for k in NAMES:
        assert not torch.isnan(ours[k].float()).any(), k
        torch.testing.assert_close(ours[k], ref[k], **tol[ref[k].dtype])


@_gpu
def test_gpu_opcheck():
    inp = {k: (v.cuda() if v is not None else None) for k, v in make(2, 64, 100, 16).items()}
    gy, glast = (t.cuda() for t in grads_out(inp))
    torch.library.opcheck(sbw.triton_bwd_op(),
                          (gy, glast, inp["u"], inp["delta"], inp["A"], inp["B"], inp["C"],
                           inp["D"], inp["z"], inp["delta_bias"], inp["initial_state"], None,
                           True, "bdl", 32, ""))
