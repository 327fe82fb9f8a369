"""The TVM backward of Mamba-2 SSD (ssmc.codegen.tvm.ssd_bwd: the Mamba-1 backward kernel in its
scalar-A-per-head mode, with a keep mask for seq_idx) against the torch reverse scan
(ssmc.runtime.backward) and autograd through the oracle ssd_ref, and its registration behind
torch.ops.ssmc.ssd_bwd on the CPU.

Kernels are specialised on (d, n, groups, D, z, seq_idx given) and symbolic in b, L and the
chunk length, so the cases below share a handful of builds (one module-wide cache)."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("tvm")

from ssmc.codegen.tvm import selective_scan_bwd as sb  # noqa: E402
from ssmc.codegen.tvm import ssd_bwd as sd  # noqa: E402
from ssmc.codegen.tvm.build import KernelCache  # noqa: E402
from ssmc.runtime import backward as bw  # noqa: E402
from ssmc.runtime import library as lib  # noqa: E402
from ssmc.semantics.selective import ssd_ref  # noqa: E402

TOL = dict(rtol=6e-4, atol=2e-3)  # mamba-ssm's fp32 tolerances (DESIGN.md)
# headdim 20: a task block of 16 channels plus a 4-wide tail block in every head (8 + 8 + 4
# on AVX2); n = 20: grouped B/C gradients sum 16 (or 2 x 8) states with vector shuffles and 4
# with scalar adds
H_, P_, N_ = 4, 20, 20
NAMES = ("x", "dt", "A", "B", "C", "D", "z", "dt_bias", "initial_states")


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return KernelCache(root=tmp_path_factory.mktemp("tvm_ssd_bwd_cache"))


@pytest.fixture
def spy(monkeypatch, cache):
    """Counts the kernel's runs behind the op (and builds them in the module's cache)."""
    calls = []
    real = sd.ssd_scan_backward

    def counting(*args, **kwargs):
        calls.append(True)
        return real(*args, **kwargs, cache=cache)

    monkeypatch.setattr(sd, "ssd_scan_backward", counting)
    return calls


def _seq_idx(b, L):
    """Document ids with a boundary inside the first chunk, one on a chunk start (128) and
    rows that differ; none for L < 3."""
    idx = torch.zeros(b, L, dtype=torch.long)
    if L >= 3:
        idx[0, L // 3:] += 1
        idx[1, 2:] += 1
    if L > 128:
        idx[:, 128:] += 1
    if L > 700:
        idx[0, 700:] += 1
    return idx


def _inputs(b=2, L=7, g=2, D="h", z=True, h0=True, softplus=True, seed=0,
            dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=gen)  # noqa: E731
    h, p, n = H_, P_, N_
    dt = 0.5 * r(b, L, h) if softplus else 0.05 + 0.3 * torch.rand(b, L, h, generator=gen)
    kw = dict(x=r(b, L, h, p), dt=dt, A=-torch.rand(h, generator=gen) - 0.2, B=r(b, L, g, n),
              C=r(b, L, g, n), D={"h": r(h), "hp": r(h, p), None: None}[D],
              z=r(b, L, h, p) if z else None, dt_bias=0.3 * r(h) if softplus else None,
              initial_states=r(b, h, p, n) if h0 else None)
    return {k: v.to(dtype) for k, v in kw.items() if v is not None}


# (L, chunk, groups, D, z, h0, seq_idx, grad of the final states, checkpoints from the forward)
ENGINE_CASES = [
    (1, 64, 1, None, False, False, False, False, True),
    (7, 4, 2, "h", True, True, True, True, True),
    (7, 3, 1, "hp", False, True, True, False, False),     # checkpoints recomputed
    (64, 24, 2, "h", True, True, True, True, True),       # chunk does not divide L
    (64, 7, 1, None, False, False, False, True, False),
    (1000, 48, 1, "hp", False, True, True, False, True),
    (1000, 64, 2, "h", True, True, True, True, False),
]


@pytest.mark.parametrize("case", ENGINE_CASES, ids=[
    f"L{c[0]}-K{c[1]}-g{c[2]}" + (f"-D{c[3]}" if c[3] else "") + "".join(
        f"-{n}" for n, on in zip(("z", "h0", "seqidx", "gfinal", "ckpt"), c[4:]) if on)
    for c in ENGINE_CASES])
def test_matches_the_torch_engine(case, cache):
    """ssd_scan_backward against the torch engine on the library's SSD problem (channels
    d = h p, A (d, 1), dt repeated over p, keep from seq_idx), gradients w.r.t. the effective
    step; both reduced to SSD's shapes."""
    L, K, g, D, z, h0, seq, gfinal, ckpt = case
    kw = _inputs(L=L, g=g, D=D, z=z, h0=h0)
    b, h, p, n = 2, H_, P_, N_
    si = _seq_idx(b, L) if seq else None
    prob, _ = lib._ssd_problem(kw["x"], kw["dt"], kw["A"], kw["B"], kw["C"], kw.get("D"),
                               kw.get("z"), kw.get("dt_bias"), kw.get("initial_states"), si,
                               True, 0.0, float("inf"))
    gen = torch.Generator().manual_seed(1)
    gy = torch.randn(b, L, h, p, generator=gen)
    gf = torch.randn(b, h, p, n, generator=gen) if gfinal else None
    ck = bw.scan_forward(prob, K)[2] if ckpt else None
    ref = bw.scan_backward(prob, gy.reshape(b, L, h * p), None if gf is None else
                           gf.reshape(b, h * p, n), ck, K)
    got = sd.ssd_scan_backward(gy, gf, kw["x"], prob.dt[..., ::p], kw["A"], kw["B"], kw["C"],
                               kw.get("D"), kw.get("z"), kw.get("initial_states"), si,
                               None if ck is None else ck.reshape(b, -1, h, p, n), K,
                               cache=cache)
    gD = ref["D"]
    if gD is not None:
        gD = gD.reshape(h, p).sum(-1) if kw["D"].dim() == 1 else gD.reshape(h, p)
    want = {"x": ref["u"].reshape(b, L, h, p), "dt": ref["dt"].reshape(b, L, h, p).sum(-1),
            "A": ref["A"].reshape(h, p).sum(-1), "B": ref["B"], "C": ref["C"], "D": gD,
            "z": None if ref["z"] is None else ref["z"].reshape(b, L, h, p),
            "h0": None if ref["h0"] is None else ref["h0"].reshape(b, h, p, n)}
    assert set(got) == set(want)
    for name, w in want.items():
        if w is None:
            assert got[name] is None, name
            continue
        assert got[name].shape == w.shape, name
        torch.testing.assert_close(got[name], w, **TOL, msg=name)


def test_whole_head_blocks(cache):
    """headdim 64: the default SSD block (4 vectors) carries a whole head (several interleaved
    vectors per task), the layout of the benchmark shapes; a small n keeps the build short."""
    b, L, h, p, n, K = 2, 70, 2, 64, 4, 32
    gen = torch.Generator().manual_seed(5)
    r = lambda *s: torch.randn(*s, generator=gen)  # noqa: E731
    x, dt, A = r(b, L, h, p), 0.5 * r(b, L, h), -torch.rand(h, generator=gen) - 0.2
    B, C, D, z, h0 = r(b, L, 1, n), r(b, L, 1, n), r(h), r(b, L, h, p), r(b, h, p, n)
    si = _seq_idx(b, L)
    prob, _ = lib._ssd_problem(x, dt, A, B, C, D, z, None, h0, si, True, 0.0, float("inf"))
    gy, gf = r(b, L, h, p), r(b, h, p, n)
    ck = bw.scan_forward(prob, K)[2]
    ref = bw.scan_backward(prob, gy.reshape(b, L, h * p), gf.reshape(b, h * p, n), ck, K)
    got = sd.ssd_scan_backward(gy, gf, x, prob.dt[..., ::p], A, B, C, D, z, h0, si,
                               ck.reshape(b, -1, h, p, n), K, cache=cache)
    want = {"x": ref["u"].reshape(b, L, h, p), "dt": ref["dt"].reshape(b, L, h, p).sum(-1),
            "A": ref["A"].reshape(h, p).sum(-1), "B": ref["B"], "C": ref["C"],
            "D": ref["D"].reshape(h, p).sum(-1), "z": ref["z"].reshape(b, L, h, p),
            "h0": ref["h0"].reshape(b, h, p, n)}
    for name, w in want.items():
        torch.testing.assert_close(got[name], w, **TOL, msg=name)


def test_generic_kernel_takes_a_keep_mask_and_one_A_per_channel(cache):
    """The Mamba-1 entry point (sb.scan_backward) covers the torch engine's SSD problem too:
    A (d, 1) and a keep mask, without SSD mode (dt per channel, one exp per state)."""
    kw = _inputs(L=50, g=2, D="hp")
    b, h, p, n = 2, H_, P_, N_
    prob, _ = lib._ssd_problem(kw["x"], kw["dt"], kw["A"], kw["B"], kw["C"], kw["D"], kw["z"],
                               kw["dt_bias"], kw["initial_states"], _seq_idx(b, 50), True, 0.0,
                               float("inf"))
    assert sb.handles(prob)
    gen = torch.Generator().manual_seed(3)
    gy, gl = torch.randn(b, 50, h * p, generator=gen), torch.randn(b, h * p, n, generator=gen)
    ck = bw.scan_forward(prob, 16)[2]
    ref = bw.scan_backward(prob, gy, gl, ck, 16)
    got = sb.scan_backward(prob, gy, gl, ck, 16, cache=cache)
    for name, want in ref.items():
        assert got[name].shape == want.shape, name
        torch.testing.assert_close(got[name], want, **TOL, msg=name)


def _loss(y, final, seed=2):
    gen = torch.Generator().manual_seed(seed)
    return (y * torch.randn(y.shape, generator=gen)).sum() + \
        (final * torch.randn(final.shape, generator=gen)).sum()


# (L, checkpoint interval, groups, D, z, softplus, seq_idx, initial states, dt limit)
OP_CASES = [
    (1, None, 1, "h", True, True, False, True, False),
    (7, 3, 2, "hp", True, True, True, True, False),
    (64, 24, 2, None, False, False, True, False, False),     # no D, z, softplus or bias
    (64, 0, 1, "h", False, True, False, True, True),         # no checkpoints: recomputed
    (1000, None, 1, "h", True, True, True, True, True),      # interval 64: does not divide L
    (1000, 48, 2, "hp", True, True, False, False, False),
]


@pytest.mark.parametrize("case", OP_CASES, ids=[
    f"L{c[0]}-K{c[1]}-g{c[2]}" + (f"-D{c[3]}" if c[3] else "") + "".join(
        f"-{n}" for n, on in zip(("z", "softplus", "seqidx", "h0", "limit"), c[4:]) if on)
    for c in OP_CASES])
def test_op_runs_the_kernel_and_matches_autograd_through_the_oracle(case, spy):
    """ssmc.runtime.library.ssd (TVM forward with checkpoints, the final states in the loss):
    the backward op runs the kernel, and the gradients of every input agree with autograd
    through ssd_ref (fp32)."""
    L, K, g, D, z, softplus, seq, h0, limit = case
    ours = {k: v.requires_grad_() for k, v in _inputs(L=L, g=g, D=D, z=z, h0=h0,
                                                       softplus=softplus).items()}
    theirs = {k: v.detach().clone().requires_grad_() for k, v in ours.items()}
    opts = dict(seq_idx=_seq_idx(2, L) if seq else None, dt_softplus=softplus,
                dt_limit=(0.05, 1.5) if limit else (0.0, float("inf")),
                return_final_states=True)
    y, final = lib.ssd(**ours, chunk_size=64, checkpoint_every=K, **opts)
    _loss(y, final).backward()
    assert spy == [True]
    y_ref, final_ref = ssd_ref(**theirs, **opts)
    torch.testing.assert_close(y, y_ref, **TOL)
    _loss(y_ref, final_ref).backward()
    assert set(ours) <= set(NAMES)
    for name in ours:
        torch.testing.assert_close(ours[name].grad, theirs[name].grad, **TOL, msg=name)


def test_op_without_final_states_in_the_loss(spy):
    """grad_final absent (return_final_states=False): only y's gradient flows."""
    ours = {k: v.requires_grad_() for k, v in _inputs(L=40).items()}
    theirs = {k: v.detach().clone().requires_grad_() for k, v in ours.items()}
    y = lib.ssd(**ours, dt_softplus=True, checkpoint_every=16)
    (y * y).sum().backward()
    assert spy == [True]
    y_ref = ssd_ref(**theirs, dt_softplus=True)
    (y_ref * y_ref).sum().backward()
    for name in ours:
        torch.testing.assert_close(ours[name].grad, theirs[name].grad, **TOL, msg=name)


def test_bf16_gradients_equal_the_torch_engines(spy):
    """The same backward op with and without the kernel registered (bf16 inputs: both compute
    in fp32 and round the gradients to bf16)."""
    kw = _inputs(L=100, g=2, D="hp")
    si = _seq_idx(2, 100)

    def grads():
        leaves = {k: v.detach().to(torch.bfloat16).requires_grad_() for k, v in kw.items()}
        y, final = lib.ssd(**leaves, seq_idx=si, dt_softplus=True, return_final_states=True,
                           checkpoint_every=32)
        _loss(y.float(), final.float()).backward()
        return {k: v.grad for k, v in leaves.items()}

    with_kernel = grads()
    assert spy == [True]
    key = ("ssd", "cpu")
    previous = lib._BACKWARD.get(key)
    lib.register_backward(*key, None)
    try:
        engine = grads()
    finally:
        lib.register_backward(*key, previous)
    assert spy == [True]
    for name in kw:
        assert with_kernel[name].dtype == torch.bfloat16
        torch.testing.assert_close(with_kernel[name], engine[name], rtol=3e-2, atol=5e-2,
                                   msg=name)


def test_float64_gradcheck_runs_the_torch_engine(spy):
    """The kernel computes in fp32: float64 (gradcheck) declines to the torch engine, whose
    float64 gradients gradcheck passes for every input, seq_idx and the dt limit included."""
    kw = {k: v.double() for k, v in _inputs(b=2, L=9, D="hp").items()}
    for name, v in list(kw.items()):  # a smaller problem than the kernel cases
        if name in ("x", "z"):
            kw[name] = v[..., :2].contiguous()
        elif name == "D":
            kw[name] = v[:, :2].contiguous()
        elif name in ("B", "C"):
            kw[name] = v[..., :3].contiguous()
        elif name == "initial_states":
            kw[name] = v[:, :, :2, :3].contiguous()
    names = list(kw)
    si = _seq_idx(2, 9)

    def f(*ts):
        return lib.ssd(**dict(zip(names, ts)), seq_idx=si, dt_softplus=True,
                       dt_limit=(0.2, 1.5), return_final_states=True, checkpoint_every=4)

    leaves = [kw[n].clone().requires_grad_() for n in names]
    assert torch.autograd.gradcheck(f, leaves, fast_mode=True, atol=1e-7, rtol=1e-5)
    assert spy == []
    args = dict(grad_y=torch.ones_like(kw["x"]), grad_final=None, seq_idx=si, checkpoints=None,
                dt_softplus=True, dt_lo=0.0, dt_hi=float("inf"), checkpoint_every=4, **kw)
    assert sd.ssd_backward(**args) is NotImplemented


def test_registered_for_the_cpu():
    assert lib._BACKWARD[("ssd", "cpu")] is lib.ssd_backward_tvm
