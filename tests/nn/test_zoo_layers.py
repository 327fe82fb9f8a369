"""The ssmc.nn layers of the other zoo SSMs (LRU, LCDE, RIR, Chimera, PLRNN): each runs its
compiled kernel (TVM on the CPU) and matches its eager reference on awkward lengths, passes
gradients that match the reference's, drops into a user model, and moves its weights to and
from the reference (state dicts both ways)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import ssmc.nn as snn
from ssmc.semantics.model import GraphModule

FP32 = dict(rtol=6e-4, atol=2e-3)  # DESIGN.md: mamba-ssm's fp32 tolerances
LENGTHS = (1, 7, 100)

# (class, constructor arguments, input shape after (batch, L), output shape after batch given L)
LAYERS = [
    (snn.LRU, dict(d_model=8, d_state=8), (8,), lambda L: (L, 8)),
    (snn.LCDE, dict(d_model=8, d_state=8, block_size=4), (8,), lambda L: (L, 8)),
    (snn.RIR, dict(d_model=8, chunk=5), (8,), lambda L: (8,)),
    (snn.Chimera, dict(d_model=8, d_state=4, variates=3), (3, 8), lambda L: (L, 3, 8)),
    (snn.PLRNN, dict(d_latent=8, d_input=3), (3,), lambda L: (L, 8)),
    (snn.PLRNN, dict(d_latent=8, d_input=3, hrf_len=6), (3,), lambda L: (L, 8)),
]
IDS = ["LRU", "LCDE", "RIR", "Chimera", "PLRNN", "PLRNN_hrf"]


def _input(tail, L, batch=2, seed=0):
    return torch.randn(batch, L, *tail, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def built():
    """One layer per case (their kernels build once), with its reference."""
    out = {}
    for (cls, kw, _, _), name in zip(LAYERS, IDS):
        torch.manual_seed(0)
        layer = cls(**kw)
        out[name] = (layer, layer.reference())
    return out


@pytest.mark.parametrize("case", range(len(LAYERS)), ids=IDS)
def test_runs_a_kernel_and_keeps_the_reference_names(built, case):
    cls, kw, _, _ = LAYERS[case]
    layer, ref = built[IDS[case]]
    assert isinstance(layer, snn.SpecLayer) and type(layer) is cls
    hows = list(layer.kernels.values())
    assert hows and all(h.startswith("tvm:") for h in hows), layer.kernels
    assert [n for n, _ in layer.named_parameters()] == [n for n, _ in ref.named_parameters()]
    assert {k: v.shape for k, v in layer.state_dict().items()} == \
        {k: v.shape for k, v in ref.state_dict().items()}
    assert cls.__name__ in snn.__all__


@pytest.mark.parametrize("L", LENGTHS)
@pytest.mark.parametrize("case", range(len(LAYERS)), ids=IDS)
def test_forward_matches_reference(built, case, L):
    _, _, tail, out_shape = LAYERS[case]
    layer, ref = built[IDS[case]]
    x = _input(tail, L)
    with torch.no_grad():
        y = layer(x)
        want = ref(x)
    assert y.shape == (2, *out_shape(L)) and y.dtype == torch.float32
    torch.testing.assert_close(y, want, **FP32)


@pytest.mark.parametrize("case", range(len(LAYERS)), ids=IDS)
def test_gradients_match_reference(built, case):
    """Backward through the compiled layer: the parameters' and the input's gradients are the
    reference's (fp32)."""
    _, _, tail, _ = LAYERS[case]
    layer, ref = built[IDS[case]]
    layer.train()
    ref.train()
    grads = {}
    for name, m in (("layer", layer), ("ref", ref)):
        m.zero_grad(set_to_none=True)
        x = _input(tail, 13, seed=3).requires_grad_()
        y = m(x)
        (y.square().mean() + y.mean()).backward()
        grads[name] = ({n: p.grad for n, p in m.named_parameters()}, x.grad)
    (pg, xg), (rpg, rxg) = grads["layer"], grads["ref"]
    assert xg is not None and torch.isfinite(xg).all()
    torch.testing.assert_close(xg, rxg, rtol=1e-3, atol=1e-5)
    trained = 0
    for name, p in layer.named_parameters():
        if not p.requires_grad:  # a fixed HRF
            assert pg[name] is None and rpg[name] is None
            continue
        assert pg[name] is not None, name
        torch.testing.assert_close(pg[name], rpg[name], rtol=1e-3, atol=1e-5, msg=name)
        trained += 1
    assert trained


@pytest.mark.parametrize("case", range(len(LAYERS)), ids=IDS)
def test_inside_a_user_model(case):
    """A layer as a submodule: its parameters under the submodule's name, one optimiser step
    lowers the loss."""
    cls, kw, tail, _ = LAYERS[case]
    torch.manual_seed(1)

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inp = torch.nn.Linear(tail[-1], tail[-1])
            self.mixer = cls(**kw)
            self.head = torch.nn.LazyLinear(4)

        def forward(self, x):
            return self.head(F.gelu(self.mixer(self.inp(x))))

    net = Net()
    x = _input(tail, 9, seed=2)
    target = torch.randn(net(x).shape, generator=torch.Generator().manual_seed(4))
    inner = next(iter(net.mixer.state_dict()))
    assert f"mixer.{inner}" in net.state_dict()
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    loss0 = F.mse_loss(net(x), target)
    opt.zero_grad()
    loss0.backward()
    assert net.inp.weight.grad is not None and net.inp.weight.grad.abs().sum() > 0
    opt.step()
    with torch.no_grad():
        assert F.mse_loss(net(x), target) < loss0


@pytest.mark.parametrize("case", range(len(LAYERS)), ids=IDS)
def test_state_dict_round_trip_with_reference(case):
    """Weights move reference -> compiled layer -> reference-fallback layer -> reference: the
    outputs stay the reference's."""
    cls, kw, tail, _ = LAYERS[case]
    torch.manual_seed(2)
    layer = cls(**kw)
    torch.manual_seed(3)  # other weights than the layer's
    ref = GraphModule(layer.source_graph)
    with torch.no_grad():  # weights the init would not produce
        for p in ref.parameters():
            p.add_(0.01 * torch.randn_like(p))
    layer.load_state_dict(ref.state_dict())
    eager = cls(**kw, use_kernels=False)
    assert eager.kernels == {}
    eager.load_state_dict(layer.state_dict())
    back = GraphModule(layer.source_graph)
    back.load_state_dict(eager.state_dict())
    x = _input(tail, 11, seed=5)
    with torch.no_grad():
        want = ref(x)
        torch.testing.assert_close(layer(x), want, **FP32)
        torch.testing.assert_close(eager(x), want, rtol=0, atol=0)
        torch.testing.assert_close(back(x), want, rtol=0, atol=0)
    for k, v in ref.state_dict().items():
        torch.testing.assert_close(back.state_dict()[k], v, rtol=0, atol=0)


def test_constructor_arguments_reach_the_spec():
    lcde = snn.LCDE(8, d_state=8, transition="expm", D=False, use_kernels=False)
    assert lcde.cde.transition == "expm" and lcde.cde.D is None and lcde.cde.block_size == 8
    rir = snn.RIR(8, chunk=4, inner="rnn", use_kernels=False)
    assert (rir.encoder.chunk, rir.encoder.inner) == (4, "rnn")
    chim = snn.Chimera(8, d_state=4, variates=5, selective=False, bidirectional=False)
    assert chim.bindings["variates"] == 5 and not chim.ssm2d.selective
    assert not chim.ssm2d.bidirectional
    lru = snn.LRU(6, d_state=4, conj_pair=False, use_kernels=False)
    assert lru.lru.parameterization == "polar" and not lru.lru.conj_pair
    assert lru.lru.nu.shape == (6, 4)
    plrnn = snn.PLRNN(8, 3, hrf_len=5, hrf_learnable=True, use_kernels=False)
    assert plrnn.hrf.kernel.requires_grad and plrnn.hrf.kernel.shape[-1] == 5
    with pytest.raises(ValueError, match="block_size"):
        snn.LCDE(8, d_state=8, block_size=3)
    with pytest.raises(ValueError, match="hrf_len"):
        snn.PLRNN(8, 3, hrf_len=-1)


def test_chimera_runs_other_variate_counts(built):
    layer, ref = built["Chimera"]
    x = torch.randn(1, 5, 7, 8)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), ref(x), **FP32)


@pytest.mark.parametrize("case", range(len(LAYERS)), ids=IDS)
def test_save_and_load_with_kernels(built, case, tmp_path):
    """layer.save / ssmc.load: the same outputs, the layer's TVM kernels saved beside it."""
    import json

    import ssmc
    from ssmc.runtime.saveload import MANIFEST

    _, _, tail, _ = LAYERS[case]
    layer, _ = built[IDS[case]]
    layer.eval()
    layer.save(tmp_path / "layer")
    assert json.loads((tmp_path / "layer" / MANIFEST).read_text())["kernels"]
    loaded = ssmc.load(tmp_path / "layer").eval()
    assert loaded.kernels == layer.kernels and loaded.saved_kernels
    x = _input(tail, 7, seed=6)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), layer(x), rtol=0, atol=0)
