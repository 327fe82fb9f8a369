"""Nested recursion (RIR / BBT-GRC, beam) by the level-synchronous plan
(ssmc.codegen.composite.nested) against the oracles of ssmc.semantics.nested; the fused GRC
elementwise kernels (TVM on the CPU, Triton through the interpreter); the compiled rir model."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import ssmc
from ssmc import costmodel as cm
from ssmc.codegen.composite import nested as N
from ssmc.paths import zoo_dir
from ssmc.runtime import nested_op  # noqa: F401  (defines ssmc::nested_tree)
from ssmc.semantics.model import build_reference
from ssmc.semantics.modules_misc import NestedRecursion
from ssmc.semantics.nested import nested_recursive, nested_ref

FP32 = dict(rtol=6e-4, atol=2e-3)


def _module(d, k, inner, beam=3, seed=0):
    torch.manual_seed(seed)
    return NestedRecursion(d, chunk=k, inner=inner, beam=beam)


def _args(m):
    return m.cell.weights(), m.inner, m.chunk, m.scorer.weights() if m.scorer else None, m.beam


def _both(m, x, lengths=None, epilogue="auto"):
    w, inner, k, sw, beam = _args(m)
    with torch.no_grad():
        want = nested_ref(x, w, inner, k, lengths, sw, beam)
        got = N.nested_tree(x, w, inner, k, lengths, sw, beam, epilogue=epilogue)
    return got, want


# L = 1, 7, 100, 1000 with chunk sizes that divide L and that do not; 1000 only for the cheap
# inner models (the beam's steps grow with k^2).
CASES = [(1, 4), (7, 3), (7, 30), (100, 10), (100, 7), (1000, 10), (1000, 32)]


@pytest.mark.parametrize("inner", ["bbt", "rnn"])
@pytest.mark.parametrize("L,k", CASES)
def test_tree_matches_oracle(inner, L, k):
    m = _module(16, k, inner)
    x = torch.randn(2, L, 16)
    got, want = _both(m, x)
    assert got.shape == (2, 16) and got.dtype == x.dtype
    torch.testing.assert_close(got, want, **FP32)


@pytest.mark.parametrize("L,k", [(1, 4), (7, 3), (30, 5), (64, 30)])
def test_beam_matches_oracle(L, k):
    m = _module(16, k, "beam", beam=3)
    got, want = _both(m, torch.randn(2, L, 16))
    torch.testing.assert_close(got, want, **FP32)


@pytest.mark.parametrize("inner", ["bbt", "rnn", "beam"])
def test_lengths_and_torch_epilogue(inner):
    m = _module(8, 4, inner, beam=2)
    x = torch.randn(4, 37, 8)
    lengths = torch.tensor([1, 37, 12, 5])
    for epilogue in ("tvm", "torch"):
        got, want = _both(m, x, lengths, epilogue)
        torch.testing.assert_close(got, want, **FP32)


def test_matches_plain_recursion():
    m = _module(8, 5, "bbt")
    x = torch.randn(2, 23, 8)
    w, inner, k, _, _ = _args(m)
    with torch.no_grad():
        torch.testing.assert_close(N.nested_tree(x, w, inner, k), nested_recursive(x, w, inner, k),
                                   **FP32)


@pytest.mark.parametrize("inner,L,k,lengths", [("bbt", 13, 3, None), ("rnn", 9, 4, [9, 4]),
                                                ("bbt", 40, 5, [40, 17])])
def test_gradients_match_oracle(inner, L, k, lengths):
    """The plan's backward (reverse level walk) against autograd through the oracle."""
    lengths = None if lengths is None else torch.tensor(lengths)
    m = _module(6, k, inner).double()
    x = torch.randn(2, L, 6, dtype=torch.float64, requires_grad=True)
    params = [x, *m.cell.parameters()]
    w = m.cell.weights()
    got = torch.autograd.grad(N.nested_tree(x, w, inner, k, lengths).square().sum(), params)
    want = torch.autograd.grad(nested_ref(x, w, inner, k, lengths).square().sum(), params)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    m = _module(6, k, inner)  # fp32: the fused forward, the same gradients
    x = torch.randn(2, L, 6, requires_grad=True)
    params = [x, *m.cell.parameters()]
    w = m.cell.weights()
    got = torch.autograd.grad(N.nested_tree(x, w, inner, k, lengths).square().sum(), params)
    want = torch.autograd.grad(nested_ref(x, w, inner, k, lengths).square().sum(), params)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-5)


def test_float64_and_low_precision():
    m = _module(8, 3, "bbt").double()
    x = torch.randn(2, 11, 8, dtype=torch.float64)
    got, want = _both(m, x)  # float64 runs the torch epilogue in float64
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    m = _module(8, 3, "rnn")
    for dtype in (torch.float16, torch.bfloat16):
        x = torch.randn(2, 11, 8).to(dtype)
        got, want = _both(m, x)
        assert got.dtype == dtype
        torch.testing.assert_close(got.float(), want.float(), rtol=3e-2, atol=5e-2)


def test_plan_shape():
    """L 4096, k 32: 5 + 5 + 2 levels, L - 1 merges per row, outputs in contiguous id ranges."""
    plan = N.build_plan((4096, 4096), 4096, 32, "bbt")
    assert len(plan.levels) == 12 and plan.merges == 2 * 4095
    first = plan.zero + 1
    for pairs, start in plan.levels:
        assert start == first
        assert int(pairs.max()) < start  # a level reads only nodes made before it
        first += pairs.shape[0]
    assert first == plan.total
    st = N.plan_stats(4096, 32)
    assert (st["levels"], st["merges"], st["max_pairs"]) == (12, 4095, 2048)
    # the cost model counts the same plan without building it
    for L, k, inner in [(4096, 32, "bbt"), (1000, 7, "rnn"), (100, 30, "bbt"), (1, 4, "rnn"),
                        (45, 30, "bbt"), (44, 30, "rnn")]:
        st = N.plan_stats(L, k, inner)
        assert cm.nested_shape(L, k, inner)[:2] == (st["levels"], st["merges"]), (L, k, inner)


@pytest.mark.parametrize("call,name", [
    (lambda x, w: N.nested_tree(x, w, inner="tree"), "inner"),
    (lambda x, w: N.nested_tree(x, w, chunk=1), "chunk"),
    (lambda x, w: N.nested_tree(x, w, inner="beam", scorer=None), "scorer"),
    (lambda x, w: N.nested_tree(x, w, lengths=torch.tensor([0, 3])), "lengths"),
    (lambda x, w: N.nested_tree(x[..., :4], w), "x"),
    (lambda x, w: N.nested_tree(x[0], w), "x"),
    (lambda x, w: N.nested_tree(x, w, epilogue="cuda"), "epilogue"),
    (lambda x, w: N.nested_tree(x.double(), w, epilogue="tvm"), "epilogue"),
])
def test_bad_arguments_name_the_argument(call, name):
    m = _module(8, 4, "bbt")
    with pytest.raises(ValueError, match=name):
        call(torch.randn(2, 5, 8), m.cell.weights())


# ----------------------------------------------------------------------------- GRC kernels


def _epilogue_ref(g, lr, w, b):
    d = w.shape[0]
    f1, f2, i, p = g.chunk(4, -1)
    mix = torch.sigmoid(f1) * lr[:, :d] + torch.sigmoid(f2) * lr[:, d:] + torch.sigmoid(i) * p
    return F.layer_norm(mix, (d,), w, b, 1e-5)


@pytest.mark.parametrize("d", [1, 12, 64])
def test_tvm_grc_kernels(d):
    from ssmc.codegen.tvm.grc import gelu_, grc_epilogue

    P = 37
    g, lr = torch.randn(P, 4 * d) * 3, torch.randn(P, 2 * d)
    w, b = torch.randn(d), torch.randn(d)
    out = grc_epilogue(g, lr, w, b, 1e-5, torch.empty(P, d))
    torch.testing.assert_close(out, _epilogue_ref(g, lr, w, b), rtol=1e-5, atol=1e-5)
    h = torch.randn(P, 4 * d) * 5
    want = F.gelu(h)
    torch.testing.assert_close(gelu_(h), want, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="out"):
        grc_epilogue(g, lr, w, b, 1e-5, torch.empty(P, d, dtype=torch.float64))
    with pytest.raises(ValueError, match="lr"):
        grc_epilogue(g, lr[:, :d], w, b, 1e-5, torch.empty(P, d))
    with pytest.raises(ValueError, match="h"):
        gelu_(h.t())


def test_triton_grc_kernels_interpreter():
    from ssmc.codegen.triton.grc import gelu_, grc_epilogue

    P, d = 5, 12
    g, lr = torch.randn(P, 4 * d), torch.randn(P, 2 * d)
    w, b = torch.randn(d), torch.randn(d)
    out = grc_epilogue(g, lr, w, b, 1e-5, torch.empty(P, d))
    torch.testing.assert_close(out, _epilogue_ref(g, lr, w, b), rtol=1e-5, atol=1e-5)
    h = torch.randn(P, 40)
    torch.testing.assert_close(gelu_(h.clone()), F.gelu(h), rtol=1e-5, atol=1e-6)
    m = _module(12, 3, "bbt")
    got, want = _both(m, torch.randn(2, 7, 12), epilogue="triton")
    torch.testing.assert_close(got, want, **FP32)


@pytest.mark.parametrize("backend", ["tvm", "triton"])
def test_grc_kernels_reject_bad_arguments_alike(backend):
    """Both backends check through ssmc.codegen.grc_args: the argument, the shape expected."""
    import importlib

    mod = importlib.import_module(f"ssmc.codegen.{backend}.grc")
    P, d = 5, 12
    g, lr, w, b = torch.randn(P, 4 * d), torch.randn(P, 2 * d), torch.randn(d), torch.randn(d)
    with pytest.raises(ValueError, match=r"^g must be a row-contiguous fp32.*\(P, 48\)"):
        mod.grc_epilogue(g[:, :40], lr, w, b, 1e-5, torch.empty(P, d))
    with pytest.raises(ValueError, match="^g, lr and out must have the same rows; got 5, 4, 5"):
        mod.grc_epilogue(g, lr[:4], w, b, 1e-5, torch.empty(P, d))
    with pytest.raises(ValueError, match="^h must be a row-contiguous"):
        mod.gelu_(torch.randn(3))


# ----------------------------------------------------------------------------- compiled model


@pytest.fixture(scope="module")
def rir_cpu():
    torch.manual_seed(1)
    return ssmc.compile(zoo_dir() / "rir.yaml", "cpu", seqlen=256).eval()


def test_rir_runs_on_the_tree_kernel(rir_cpu):
    assert rir_cpu.kernels == {"encoder": "tvm:nested_recursion/tree"}
    assert "tvm:nested_recursion/tree" in rir_cpu.summary()


@pytest.mark.parametrize("L", [1, 7, 100])
def test_rir_matches_reference(rir_cpu, L):
    ref = build_reference(rir_cpu.source_graph).eval()
    ref.load_state_dict(rir_cpu.state_dict())
    tokens = torch.randint(0, 256, (2, L))
    with torch.no_grad():
        torch.testing.assert_close(rir_cpu(tokens), ref(tokens), **FP32)
    # training: the plan's own backward, the reference's gradients
    rir_cpu.zero_grad(set_to_none=True)
    rir_cpu(tokens).square().sum().backward()
    ref(tokens).square().sum().backward()
    grads = dict(ref.named_parameters())
    for name, p in rir_cpu.named_parameters():
        want = grads[name].grad
        got = p.grad if p.grad is not None else torch.zeros_like(p)
        torch.testing.assert_close(got, want if want is not None else torch.zeros_like(p),
                                   rtol=1e-3, atol=1e-5, msg=name)
    rir_cpu.zero_grad(set_to_none=True)


def test_open_chunk_is_chosen_by_the_cost_model():
    text = (zoo_dir() / "rir.yaml").read_text().replace(", chunk: chunk", "")
    model = ssmc.compile(text, "cpu", seqlen=512).eval()
    node = next(n for _, n, _ in model.graph.walk() if n.OP == "nested_recursion")
    k = node.meta["chunk"]
    assert node.chunk == k == model.encoder.chunk and "cost model" in node.meta["chunk_why"]
    assert k in cm.NESTED_CHUNKS
    ref = NestedRecursion(64, chunk=k).eval()
    ref.load_state_dict(model.encoder.state_dict())
    x = torch.randn(2, 300, 64)
    with torch.no_grad():
        torch.testing.assert_close(N.nested_tree(x, model.encoder.cell.weights(), chunk=k),
                                   ref(x), **FP32)


def test_chunk_choice_prefers_fewer_levels_then_the_default():
    from ssmc.targets import load_target

    cpu, gpu = load_target("cpu"), load_target("sm_90")
    # the work does not depend on k for BBT: on a CPU (GEMM-bound) it is a tie -> 30
    assert cm.choose_nested_chunk(2, 4096, 256, cpu)[0] == 30
    # a GPU pays per level: 12 levels with k = 32 against 13 with k = 30
    k, times = cm.choose_nested_chunk(2, 4096, 256, gpu)
    assert cm.nested_shape(4096, k)[0] == 12 and times[k] < times[30]


# ----------------------------------------------------------------------------- the custom ops

def _op_args(inner="bbt", L=9, k=3, lengths=(9, 5), d=4, keep=True, dtype=torch.float64,
             kind="torch"):
    m = _module(d, k, inner).to(dtype)
    w = m.cell.weights()
    x2 = torch.randn(len(lengths) * L, d, dtype=dtype, requires_grad=keep)
    ws = [t.detach().clone().requires_grad_(keep) for t in w[:6]]
    return (x2, *ws, float(w.eps), list(lengths), L, k, inner, kind, keep)


@pytest.mark.parametrize("inner", ["bbt", "rnn"])
@pytest.mark.parametrize("keep", [True, False])
def test_opcheck_nested_tree(inner, keep):
    torch.library.opcheck(torch.ops.ssmc.nested_tree.default, _op_args(inner, keep=keep))


def test_opcheck_nested_tree_bwd():
    args = _op_args()
    with torch.no_grad():
        roots, store, acts = torch.ops.ssmc.nested_tree(*args)
    x2, w1, b1, w2, b2, ln_w, ln_b, eps, lengths, L, k, inner, _, _ = args
    torch.library.opcheck(torch.ops.ssmc.nested_tree_bwd.default,
                          (torch.randn_like(roots), store, acts, w1.detach(), w2.detach(),
                           ln_w.detach(), ln_b.detach(), eps, lengths, L, k, inner))


def test_nested_tree_op_gradcheck_float64():
    x2, *ws, eps, lengths, L, k, inner, kind, keep = _op_args(L=5, k=2, lengths=(5, 3), d=3)
    torch.autograd.gradcheck(
        lambda x, *w: torch.ops.ssmc.nested_tree(x, *w, eps, lengths, L, k, inner, kind,
                                                 True)[0], (x2, *ws))


def test_nested_tree_fake_shapes():
    from torch._subclasses.fake_tensor import FakeTensorMode

    real = _op_args(lengths=(9, 5, 9), keep=True, dtype=torch.float32, kind="tvm")
    want = [t.shape for t in torch.ops.ssmc.nested_tree(*real)]
    with FakeTensorMode() as mode:
        fake = [mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in real]
        got = [t.shape for t in torch.ops.ssmc.nested_tree(*fake)]
    assert got == want


def test_compiled_rir_trains_under_torch_compile_fullgraph():
    """torch.compile(fullgraph=True) through the tree op, forward and backward: no graph
    break, the same loss and gradients as eager."""
    torch.manual_seed(0)
    m = _module(8, 4, "bbt")
    w_params = list(m.cell.parameters())

    def loss(x):
        return N.nested_tree(x, m.cell.weights(), "bbt", 4).square().sum()

    x = torch.randn(2, 19, 8, requires_grad=True)
    want = loss(x)
    gw = torch.autograd.grad(want, [x, *w_params])
    torch._dynamo.reset()
    got = torch.compile(loss, fullgraph=True, backend="aot_eager")(x)
    gg = torch.autograd.grad(got, [x, *w_params])
    torch.testing.assert_close(got, want, **FP32)
    for a, b in zip(gg, gw):
        torch.testing.assert_close(a, b, **FP32)


@pytest.mark.parametrize("L,k,lengths", [(7, 3, None), (12, 5, [12, 6])])
def test_beam_gradients_match_oracle(L, k, lengths):
    """The beam runs its own program under autograd (stores by assignment, the oracle's GRC):
    the gradients of every input and parameter (the scorer's too) are the oracle's."""
    lengths = None if lengths is None else torch.tensor(lengths)
    for dtype, tol in ((torch.float64, dict(rtol=1e-9, atol=1e-11)),
                       (torch.float32, dict(rtol=1e-3, atol=1e-5))):
        m = _module(6, k, "beam", beam=3).to(dtype)
        x = torch.randn(2, L, 6, dtype=dtype, requires_grad=True)
        params = [x, *m.parameters()]
        w, inner, k_, sw, beam = _args(m)
        got = torch.autograd.grad(
            N.nested_tree(x, w, inner, k_, lengths, sw, beam).square().sum(), params)
        want = torch.autograd.grad(
            nested_ref(x, w, inner, k_, lengths, sw, beam).square().sum(), params)
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, **tol)


def test_compiled_beam_model_trains_through_the_tree_program():
    """A compiled rir model with the beam inner model no longer hands training to the
    reference: its nested node runs the composite's beam (counted) and the gradients match."""
    calls = []
    orig = N._beam_reduce

    def counted(*a, **kw):
        calls.append(1)
        return orig(*a, **kw)

    spec = (zoo_dir() / "rir.yaml").read_text().replace("inner: bbt", "inner: beam")
    assert "inner: beam" in spec
    torch.manual_seed(0)
    model = ssmc.compile(spec, "cpu", seqlen=24)
    ref = build_reference(model.source_graph)
    ref.load_state_dict(model.state_dict())
    tokens = torch.randint(0, 64, (2, 24))
    try:
        N._beam_reduce = counted
        model(tokens).float().square().mean().backward()
    finally:
        N._beam_reduce = orig
    assert calls
    ref(tokens).float().square().mean().backward()
    grads = dict(ref.named_parameters())
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, grads[name].grad, rtol=2e-3, atol=2e-5, msg=name)


def test_nested_tree_op_rejects_bad_arguments():
    """The op's plan arguments are checked with a clear error, not a crash in the kernels."""
    args = list(_op_args(keep=False))
    bad = list(args)
    bad[11] = "beam"  # inner (x2, 6 weights, eps, lengths, L, chunk, inner): no static plan
    with pytest.raises(ValueError, match="inner must be 'bbt' or 'rnn'"):
        torch.ops.ssmc.nested_tree(*bad)
