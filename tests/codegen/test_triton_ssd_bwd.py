"""The Triton backward of Mamba-2 SSD (ssmc.codegen.triton.ssd.backward: the Mamba-1 backward
kernel in its SSD mode, dt and A per head, a keep mask for seq_idx), through the interpreter,
against autograd through the oracle ssmc.semantics.selective.ssd_ref: the gradients of x, dt,
A, B, C, D, z, dt_bias and the initial states (with a gradient of the final states too), at L
in {1, 7, 64} with chunks not dividing L, 1 and 2 groups, with and without D ((h,) and (h, p)),
z, softplus, dt_limit, seq_idx and initial states; and its registration behind
torch.ops.ssmc.ssd_bwd.

Shapes are tiny (the interpreter costs ~20 ms per program-step) and blocks small, so that they
still span several channel blocks, blocks that straddle two heads (headdim 3), ragged chunks and
groups."""

from __future__ import annotations

import pytest
import torch

from ssmc.codegen.triton.common import interpreting
from ssmc.codegen.triton.ssd import backward as tsb
from ssmc.runtime import library as lib
from ssmc.semantics.selective import ssd_ref

NAMES = ("x", "dt", "A", "B", "C", "D", "z", "dt_bias", "initial_states")
H_, P_, N_ = 4, 3, 4


def _seq_idx(b, L):
    """Document ids: a boundary inside the first chunk, rows that differ; none for L < 3."""
    idx = torch.zeros(b, L, dtype=torch.long)
    if L >= 3:
        idx[0, L // 3:] += 1
        idx[-1, 2:] += 1
    if L > 40:
        idx[:, 40:] += 1
    return idx


def _inputs(b=2, L=7, g=2, D="h", z=True, h0=True, softplus=True, h=H_, p=P_, n=N_, seed=0,
            dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=gen)  # noqa: E731
    dt = 0.5 * r(b, L, h) if softplus else 0.05 + 0.3 * torch.rand(b, L, h, generator=gen)
    kw = dict(x=r(b, L, h, p), dt=dt, A=-torch.rand(h, generator=gen) - 0.2, B=r(b, L, g, n),
              C=r(b, L, g, n), D={"h": r(h), "hp": r(h, p), None: None}[D],
              z=r(b, L, h, p) if z else None, dt_bias=0.3 * r(h) if softplus else None,
              initial_states=r(b, h, p, n) if h0 else None)
    return {k: (v.to(dtype) if k in ("x", "dt", "B", "C", "z") else v)
            for k, v in kw.items() if v is not None}


def _out_grads(kw, seed=1):
    gen = torch.Generator().manual_seed(seed)
    b, L, h, p = kw["x"].shape
    n = kw["B"].shape[-1]
    return (torch.randn(b, L, h, p, generator=gen).to(kw["x"].dtype),
            torch.randn(b, h, p, n, generator=gen))


def _reference(kw, gy, gf, opts):
    leaves = {k: v.detach().clone().requires_grad_() for k, v in kw.items()}
    y, final = ssd_ref(**leaves, **opts, return_final_states=True)
    outs, grads = [y], [gy]
    if gf is not None:
        outs.append(final)
        grads.append(gf)
    torch.autograd.backward(outs, grads)
    return {k: v.grad for k, v in leaves.items()}


def _check(ours: dict, ref: dict, tol):
    for k, want in ref.items():
        got = ours[k]
        assert got.shape == want.shape and got.dtype == want.dtype, k
        assert not torch.isnan(got.float()).any(), k
        torch.testing.assert_close(got, want, **tol[want.dtype], msg=lambda m: f"{k}: {m}")


def _kernel(kw, gy, gf, opts, K, ckpt, config=""):
    """ssd_bwd_triton on kw, from the forward's checkpoints every K steps (the torch engine's)
    or recomputing them."""
    ck = None
    lo, hi = opts.get("dt_limit", (0.0, float("inf")))
    si = opts.get("seq_idx")
    sp = opts.get("dt_softplus", False)
    if ckpt:
        _, _, ck = lib.ssd_op(kw["x"], kw["dt"], kw["A"], kw["B"], kw["C"], kw.get("D"),
                              kw.get("z"), kw.get("dt_bias"), kw.get("initial_states"), si, 64,
                              sp, lo, hi, False, K, "torch", "")
        assert ck.numel()
    out = tsb.ssd_bwd_triton(gy, gf, kw["x"], kw["dt"], kw["A"], kw["B"], kw["C"], kw.get("D"),
                             kw.get("z"), kw.get("dt_bias"), kw.get("initial_states"), si, ck,
                             sp, lo, hi, K, config)
    got = dict(zip(NAMES, out))
    return {k: got[k] for k in kw}


# (L, K, groups, D, z, h0, seq_idx, softplus, dt limit, grad of the final states, checkpoints
# from the forward, config, shape overrides)
CASES = {
    "L1": (1, 64, 1, "h", True, True, False, True, False, True, False, "", {}),
    "L7-K3-g2-seqidx-ckpt": (7, 3, 2, "hp", True, True, True, True, False, True, True,
                             '{"block_d": 2}', {}),
    "L7-K4-bare-seqidx": (7, 4, 1, None, False, False, True, False, False, False, False,
                          '{"block_d": 4}', {}),  # blocks of 4 straddle heads of 3
    # one batch row, headdim 4: two blocks of 8 channels, one per group (the interpreter's
    # time grows with programs x steps)
    "L64-K24-g2-limit-ckpt": (64, 24, 2, "h", True, True, True, True, True, True, True, "",
                              dict(b=1, p=4)),
    "L64-K48-g1-Dhp": (64, 48, 1, "hp", False, True, False, True, False, False, False,
                       '{"block_d": 8}', dict(b=1)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_fp32_against_autograd_through_the_oracle(case, tol):
    L, K, g, D, z, h0, seq, softplus, limit, gfinal, ckpt, config, shape = CASES[case]
    kw = _inputs(L=L, g=g, D=D, z=z, h0=h0, softplus=softplus, **shape)
    gy, gf = _out_grads(kw)
    gf = gf if gfinal else None
    b = kw["x"].shape[0]
    opts = dict(seq_idx=_seq_idx(b, L) if seq else None, dt_softplus=softplus,
                dt_limit=(0.05, 1.5) if limit else (0.0, float("inf")))
    _check(_kernel(kw, gy, gf, opts, K, ckpt, config), _reference(kw, gy, gf, opts), tol)


def test_whole_heads_in_a_block(tol):
    """headdim 8 and blocks of 16 channels (two whole heads per program), n 16: the shapes of
    the real layout, small."""
    kw = _inputs(b=1, L=9, g=1, h=2, p=8, n=16)
    gy, gf = _out_grads(kw)
    opts = dict(seq_idx=_seq_idx(1, 9), dt_softplus=True)
    _check(_kernel(kw, gy, gf, opts, 4, True, '{"block_d": 16}'),
           _reference(kw, gy, gf, opts), tol)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_half_inputs(dtype, tol):
    """fp16/bf16 x, dt, B, C, z (fp32 A, D, bias, states): fp32 compute, gradients in each
    input's dtype, at that dtype's tolerance."""
    kw = _inputs(L=7, g=2)
    kw = {k: (v.to(dtype) if k in ("x", "dt", "B", "C", "z") else v) for k, v in kw.items()}
    gy, gf = _out_grads(kw)
    opts = dict(seq_idx=_seq_idx(2, 7), dt_softplus=True)
    ours = _kernel(kw, gy, gf, opts, 4, False, '{"block_d": 2}')
    for k in ("x", "dt", "B", "C", "z"):
        assert ours[k].dtype == dtype
    _check(ours, _reference(kw, gy, gf, opts), tol)


def test_checkpoints_used_when_they_match():
    kw = _inputs(L=10)
    gy, _ = _out_grads(kw)
    b, L, h, p = kw["x"].shape
    n = kw["B"].shape[-1]

    def problem(ck, K):
        return tsb.ssd_backward_problem(gy, None, kw["x"], kw["dt"], kw["A"], kw["B"], kw["C"],
                                        checkpoints=ck, chunk=K)

    assert problem(torch.zeros(b, 3, h, p, n), 4).checkpoints is not None
    pr = problem(torch.zeros(b, 1, h, p, n), 16)
    assert pr.checkpoints is not None and pr.chunk == 10
    assert problem(torch.zeros(b, 2, h, p, n), 4).checkpoints is None  # another interval
    assert problem(None, 4).checkpoints is None


def test_declines_float64_and_bad_groups():
    kw = _inputs(L=5)
    gy, _ = _out_grads(kw)
    args = dict(grad_y=gy, grad_final=None, seq_idx=None, checkpoints=None, dt_softplus=True,
                dt_lo=0.0, dt_hi=float("inf"), checkpoint_every=4)
    wide = {k: v.double() for k, v in kw.items()}
    assert tsb.ssd_backward(**dict(args, grad_y=gy.double()), **wide) is NotImplemented
    three = dict(kw, B=torch.randn(2, 5, 3, N_), C=torch.randn(2, 5, 3, N_))  # 3 !| 4 heads
    assert tsb.ssd_backward(**args, **three) is NotImplemented


def test_registered_for_cuda():
    assert lib._BACKWARD[("ssd", "cuda")] is lib.ssd_backward_triton


def test_triton_op_is_registered():
    op = tsb.triton_bwd_op()
    assert op is tsb.triton_bwd_op()
    assert hasattr(torch.ops.ssmc, "ssd_bwd_triton")


def test_through_the_op_and_autograd(monkeypatch, tol):
    """The library's differentiable ssd with this backward registered for the CPU (under the
    interpreter): torch forward with checkpoints, ssmc::ssd_bwd -> this kernel (spied), the
    gradients of every input as the oracle's; float64 declines to the torch engine."""
    assert interpreting()
    calls = []
    real = tsb.ssd_bwd_triton

    def spy(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(tsb, "_OP", [spy])  # the triton_op is defined once, around the original
    monkeypatch.setitem(lib._BACKWARD, ("ssd", "cpu"), lib.ssd_backward_triton)
    kw = _inputs(L=9, g=2, D="hp")
    gy, gf = _out_grads(kw)
    opts = dict(seq_idx=_seq_idx(2, 9), dt_softplus=True, dt_limit=(0.05, 1.5))
    ref = _reference(kw, gy, gf, opts)
    leaves = {k: v.clone().requires_grad_() for k, v in kw.items()}
    y, final = lib.ssd(**leaves, **opts, return_final_states=True, backend="torch",
                       checkpoint_every=4)
    torch.autograd.backward([y, final], [gy, gf])
    assert calls == [1]
    _check({k: v.grad for k, v in leaves.items()}, ref, tol)

    wide = {k: v.double().requires_grad_() for k, v in _inputs(L=3, g=1).items()}
    lib.ssd(**wide, dt_softplus=True, backend="torch", checkpoint_every=2).sum().backward()
    assert calls == [1] and wide["A"].grad is not None


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
    """Mamba-2's layout (headdim 64, n 64, 2 groups) with seq_idx, D, z, bias and initial
    states: the kernel against the torch reverse scan (same math, fp32)."""
    b, h, p, n, K = 2, 8, 64, 64, 128
    kw = {k: v.cuda() for k, v in _inputs(b=b, L=L, g=2, h=h, p=p, n=n, dtype=dtype).items()}
    gy, gf = (t.cuda() for t in _out_grads(kw))
    si = torch.zeros(b, L, dtype=torch.long, device="cuda")
    si[0, L // 3:] = 1
    si[:, 2 * L // 3:] += 1
    ck = None
    if ckpt:
        _, _, ck = lib.ssd_op(kw["x"], kw["dt"], kw["A"], kw["B"], kw["C"], kw["D"], kw["z"],
                              kw["dt_bias"], kw["initial_states"], si, 64, True, 0.0,
                              float("inf"), False, K, "torch", "")
    args = dict(grad_y=gy, grad_final=gf, **kw, seq_idx=si, checkpoints=ck, dt_softplus=True,
                dt_lo=0.0, dt_hi=float("inf"), checkpoint_every=K)
    ours = dict(zip(NAMES, tsb.ssd_backward(**args)))
    ref = dict(zip(NAMES, lib.ssd_backward_torch(**args)))
    for k in NAMES:
        assert not torch.isnan(ours[k].float()).any(), k
        torch.testing.assert_close(ours[k], ref[k], **tol[ref[k].dtype], msg=k)


@_gpu
def test_gpu_opcheck():
    kw = {k: v.cuda() for k, v in _inputs(L=100, g=2, h=4, p=16, n=16).items()}
    gy, gf = (t.cuda() for t in _out_grads(kw))
    torch.library.opcheck(tsb.triton_bwd_op(),
                          (gy, gf, kw["x"], kw["dt"], kw["A"], kw["B"], kw["C"], kw["D"],
                           kw["z"], kw["dt_bias"], kw["initial_states"], None, None, True, 0.0,
                           float("inf"), 32, ""))
