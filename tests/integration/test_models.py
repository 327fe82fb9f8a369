"""Compiled models and ssmc.nn layers in training: gradients through the ssmc:: ops match the
reference model's, torch.compile(fullgraph=True) traces them without a graph break, and the
drop-in layers match their reference and train."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import ssmc
import ssmc.nn as snn
from ssmc.ir.spec import load_spec
from ssmc.paths import zoo_dir
from ssmc.runtime import library as lib
from ssmc.semantics.model import build_reference

FP32 = dict(rtol=6e-4, atol=2e-3)
DIMS = {"d_model": 32, "n_layers": 2}


@pytest.fixture
def count_backward(monkeypatch):
    """Counts runs of the torch reverse scan (the backward op's implementation)."""
    calls = []
    real = lib.selective_scan_backward_torch

    def counted(**kw):
        calls.append(kw["u"].shape)
        return real(**kw)

    monkeypatch.setattr(lib, "selective_scan_backward_torch", counted)
    return calls


@pytest.fixture(scope="module")
def mamba_pair():
    graph = load_spec(zoo_dir() / "mamba.yaml", dims=DIMS)
    torch.manual_seed(0)
    ref = build_reference(graph)
    model = ssmc.compile(graph, "cpu", seqlen=24, batch=2)
    model.load_state_dict(ref.state_dict())
    return model, ref


def _grads(model, tokens, targets, forward=None):
    model.zero_grad(set_to_none=True)
    logits = (model if forward is None else forward)(tokens)
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def test_compiled_mamba_gradients_match_reference(mamba_pair, count_backward):
    model, ref = mamba_pair
    model.train()
    ref.train()
    tokens = torch.randint(0, 256, (2, 24))
    targets = torch.randint(0, 256, (2, 24))
    loss, grads = _grads(model, tokens, targets)
    assert len(count_backward) == DIMS["n_layers"]  # both scans trained through the ops
    ref_loss, ref_grads = _grads(ref, tokens, targets)
    torch.testing.assert_close(loss, ref_loss, **FP32)
    assert grads.keys() == ref_grads.keys()
    for name, g in grads.items():
        scale = ref_grads[name].abs().max().clamp(min=1e-3)
        torch.testing.assert_close(g / scale, ref_grads[name] / scale, rtol=1e-3, atol=1e-3,
                                   msg=name)


def test_compiled_mamba_trains_like_reference(mamba_pair):
    """Three Adam steps from the same weights on the same batches: the same losses."""
    model, ref = mamba_pair
    start = {k: v.clone() for k, v in ref.state_dict().items()}
    losses = {}
    for name, m in (("compiled", model), ("reference", ref)):
        m.load_state_dict(start)
        opt = torch.optim.Adam(m.parameters(), lr=1e-3)
        g = torch.Generator().manual_seed(5)
        out = []
        for _ in range(3):
            tok = torch.randint(0, 256, (2, 17), generator=g)
            logits = m(tok[:, :-1])
            loss = F.cross_entropy(logits.reshape(-1, 256), tok[:, 1:].reshape(-1))
            opt.zero_grad()
            loss.backward()
            opt.step()
            out.append(loss.item())
        losses[name] = out
    model.load_state_dict(start)
    ref.load_state_dict(start)
    assert losses["compiled"] == pytest.approx(losses["reference"], rel=1e-4, abs=1e-4)


def test_start_in_training_mode_stays_on_the_reference():
    model = ssmc.compile(zoo_dir() / "mamba_start.yaml", "cpu", seqlen=16,
                         dims=None).train()
    tokens = torch.randint(0, 256, (2, 12))
    model(tokens).sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_torch_compile_fullgraph_compiled_model(mamba_pair):
    model, ref = mamba_pair
    model.load_state_dict(ref.state_dict())
    tokens = torch.randint(0, 256, (2, 16))
    torch._dynamo.reset()
    # fullgraph=True raises on any graph break; aot_eager runs the ops' fake impls and autograd
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    targets = torch.randint(0, 256, (2, 16))
    loss_c, grads_c = _grads(model, tokens, targets, forward=compiled)
    loss_e, grads_e = _grads(model, tokens, targets)
    torch.testing.assert_close(loss_c, loss_e, rtol=1e-5, atol=1e-5)
    for name, g in grads_e.items():
        torch.testing.assert_close(grads_c[name], g, rtol=1e-4, atol=1e-5, msg=name)
    torch._dynamo.reset()


def test_torch_compile_fullgraph_function_of_ops():
    """A user function mixing torch ops and ssmc ops compiles into one graph."""
    def f(u, delta, A, B, C, D):
        y = lib.selective_scan(F.silu(u), delta, A, B, C, D=D, delta_softplus=True)
        return y.square().mean()

    b, L, d, N = 2, 12, 8, 4
    args = [torch.randn(b, L, d), torch.randn(b, L, d), -torch.rand(d, N) - 0.1,
            torch.randn(b, L, 1, N), torch.randn(b, L, 1, N), torch.randn(d)]
    args = [a.requires_grad_() for a in args]
    torch._dynamo.reset()
    out = torch.compile(f, fullgraph=True, backend="aot_eager")(*args)
    out.backward()
    got = [a.grad.clone() for a in args]
    for a in args:
        a.grad = None
    f(*args).backward()
    for a, g in zip(args, got):
        torch.testing.assert_close(g, a.grad, rtol=1e-5, atol=1e-6)
    torch._dynamo.reset()


@pytest.mark.parametrize("cls,kw", [(snn.Mamba2, dict(d_model=16, d_state=8, headdim=8,
                                                        chunk_size=16)),
                                    (snn.S4D, dict(d_model=8, d_state=4))],
                         ids=["Mamba2", "S4D"])
def test_torch_compile_fullgraph_nn_layers(cls, kw):
    """The other drop-in layers trace whole too (Mamba2: ssmc::ssd), in inference and in
    training, with the eager layer's outputs and gradients."""
    torch.manual_seed(0)
    layer = cls(**kw)
    x = torch.randn(2, 13, kw["d_model"])
    torch._dynamo.reset()
    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), layer(x), rtol=1e-5, atol=1e-6)
    compiled(x).square().mean().backward()
    got = {n: p.grad.clone() for n, p in layer.named_parameters()}
    layer.zero_grad(set_to_none=True)
    layer(x).square().mean().backward()
    for name, p in layer.named_parameters():
        torch.testing.assert_close(got[name], p.grad, rtol=1e-4, atol=1e-6, msg=name)
    torch._dynamo.reset()


@pytest.mark.slow
def test_torch_compile_inductor_mamba_layer():
    layer = snn.Mamba(d_model=16)
    x = torch.randn(2, 16, 16)
    torch._dynamo.reset()
    y = torch.compile(layer, fullgraph=True)(x)
    torch.testing.assert_close(y, layer(x), rtol=1e-5, atol=1e-5)
    y.sum().backward()
    torch._dynamo.reset()


# ---- ssmc.nn ------------------------------------------------------------------------------------

LAYERS = [
    (snn.Mamba, dict(d_model=16, d_state=8)),
    (snn.Mamba2, dict(d_model=16, d_state=8, headdim=8, chunk_size=16)),
    (snn.S4D, dict(d_model=8, d_state=4)),
]


@pytest.mark.parametrize("cls,kw", LAYERS, ids=[c.__name__ for c, _ in LAYERS])
def test_nn_layer_matches_reference_and_trains(cls, kw, count_backward):
    torch.manual_seed(0)
    layer = cls(**kw)
    ref = layer.reference()
    assert [n for n, _ in layer.named_parameters()] == [n for n, _ in ref.named_parameters()]
    x = torch.randn(2, 13, kw["d_model"])
    y = layer(x)
    assert y.shape == x.shape
    torch.testing.assert_close(y, ref(x), **FP32)
    # gradients match the reference's
    y.square().mean().backward()
    ref(x).square().mean().backward()
    refg = dict(ref.named_parameters())
    for name, p in layer.named_parameters():
        torch.testing.assert_close(p.grad, refg[name].grad, rtol=1e-3, atol=1e-5, msg=name)
    if cls is snn.Mamba:
        assert count_backward  # the CPU kernel path trained through ssmc::selective_scan
    # one optimiser step lowers the loss on this batch
    opt = torch.optim.SGD(layer.parameters(), lr=0.05)
    loss0 = layer(x).square().mean()
    opt.zero_grad()
    loss0.backward()
    opt.step()
    assert layer(x).square().mean() < loss0


def test_nn_layer_in_a_user_model_and_reference_fallback():
    torch.manual_seed(1)

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(50, 16)
            self.mixer = snn.Mamba(16, d_state=4)
            self.head = torch.nn.Linear(16, 50)

        def forward(self, t):
            h = self.emb(t)
            return self.head(h + self.mixer(h))

    net = Net()
    assert "mixer.ssm.A_log" in net.state_dict()
    t = torch.randint(0, 50, (2, 9))
    out = net(t)
    F.cross_entropy(out.reshape(-1, 50), t.reshape(-1)).backward()
    assert net.mixer.in_proj.weight.grad is not None
    eager = snn.Mamba(16, d_state=4, use_kernels=False)
    assert eager.kernels == {}
    eager.load_state_dict(net.mixer.state_dict())
    torch.testing.assert_close(eager(net.emb(t)), net.mixer(net.emb(t)), **FP32)


def test_nn_layer_in_float64_uses_the_torch_engine():
    layer = snn.Mamba(8, d_state=4).to(torch.float64)
    x = torch.randn(1, 6, 8, dtype=torch.float64)
    with torch.no_grad():
        y = layer(x)
    assert y.dtype == torch.float64
    torch.testing.assert_close(y, layer.reference()(x), rtol=1e-5, atol=1e-6)
