"""convSSM: the fuse pass folds the HRF `conv` node into the PLRNN `recurrence` node on the CPU
(the TVM kernel convolves the trajectory in its epilogue); the compiled model still matches the
reference (values, gradients, state_dict keys), the fold shows in `ssmc explain`, and the conv
stays a node where the trajectory has another reader or the backend's kernel does not convolve."""

from __future__ import annotations

import pytest
import torch

import ssmc
from ssmc.cli import main
from ssmc.ir.spec import load_spec
from ssmc.passes import PassContext, run_pipeline
from ssmc.paths import zoo_dir
from ssmc.semantics.model import build_reference
from ssmc.targets import load_target

SPEC = zoo_dir() / "convssm.yaml"
TOL = dict(rtol=6e-4, atol=2e-3)


def _spec(learnable: bool = False, tail: str = "", outputs: str = "[readout]",
          readout_in: str = "hrf") -> str:
    return f"""\
name: convssm_t
dims: {{n_inputs: 3, latent: 16, hrf_len: 32, n_regions: 10}}
inputs:
  s: {{shape: [batch, seqlen, n_inputs]}}
nodes:
  - {{name: plrnn, op: recurrence, cell: plrnn, inputs: [s], latent: latent, algorithm: sequential}}
  - {{name: hrf, op: conv, inputs: [plrnn], length: hrf_len, init: hrf, tr: 2.0, learnable: {str(learnable).lower()}}}
{tail}  - {{name: readout, op: linear, inputs: [{readout_in}], out: n_regions}}
outputs: {outputs}
"""


def _lower(graph, target="cpu", seqlen=1024):
    ctx = PassContext(target=load_target(target), bindings={"batch": 2, "seqlen": seqlen},
                      dtype=graph.dtype)
    return run_pipeline(graph, ctx)


def _pair(spec, **kw):
    """(compiled for the CPU, reference) with the reference's weights."""
    model = ssmc.compile(spec, "cpu", seqlen=64, **kw)
    ref = build_reference(model.source_graph)
    model.load_state_dict(ref.state_dict())
    return model, ref


@pytest.fixture(scope="module")
def pair():
    return _pair(SPEC)


# ---- the pass -----------------------------------------------------------------------------------

def test_fuse_folds_the_hrf_conv_into_the_plrnn_node():
    out = _lower(load_spec(SPEC))
    assert [n.name for n in out.nodes] == ["plrnn", "readout"]
    plrnn = out.nodes[0]
    assert plrnn.meta["fused_nodes"] == ["hrf"]
    assert plrnn.meta["epilogue"].OP == "conv" and plrnn.meta["epilogue"].length == 32
    assert "causal conv 'hrf'" in plrnn.meta["fused"][0]
    assert out.nodes[1].inputs["x"] == "plrnn"


@pytest.mark.parametrize("case", ["second_consumer", "graph_output"])
def test_no_fold_when_the_trajectory_is_needed(case):
    if case == "second_consumer":
        text = _spec(tail="  - {name: both, op: add, inputs: [hrf, plrnn]}\n", readout_in="both")
    else:
        text = _spec(outputs="[readout, plrnn]")
    out = _lower(load_spec(text))
    assert "hrf" in [n.name for n in out.nodes]
    assert "epilogue" not in out.nodes[0].meta and "fused_nodes" not in out.nodes[0].meta
    # and the compiled model is still the reference
    model, ref = _pair(text)
    assert "+ conv" not in model.kernels["plrnn"]
    s = torch.randn(2, 9, 3)
    with torch.no_grad():
        got, want = model(s), ref(s)
    for g, w in zip(got if isinstance(got, tuple) else [got], want if isinstance(want, tuple) else [want]):
        torch.testing.assert_close(g, w, **TOL)


def test_fold_on_a_triton_target():
    """The Triton PLRNN kernel convolves too (a register ring of its last outputs): the conv
    folds on sm_90 as on the CPU (tests/codegen/test_triton_plrnn.py runs the result)."""
    out = _lower(load_spec(SPEC), "sm_90")
    assert [n.name for n in out.nodes] == ["plrnn", "readout"]
    assert out.nodes[0].meta["fused_nodes"] == ["hrf"]


def test_no_fold_where_the_kernel_does_not_convolve(monkeypatch):
    """A backend whose PLRNN kernel takes no epilogue: the conv stays a node (the reference
    runs both)."""
    from ssmc.runtime import dispatch

    monkeypatch.setattr(dispatch, "EPILOGUES", {k: v for k, v in dispatch.EPILOGUES.items()
                                                if k[2] != "triton"})
    out = _lower(load_spec(SPEC), "sm_90")
    assert [n.name for n in out.nodes] == ["plrnn", "hrf", "readout"]


def test_explain_shows_the_fold(capsys):
    rc = main(["explain", str(SPEC), "--target", "cpu"])
    out = capsys.readouterr().out
    assert rc == 0
    after = out.split("== after schedule ==")[1]
    assert "fused_nodes: ['hrf']" in after and "causal conv 'hrf'" in after
    assert "hrf = conv(" not in after and "readout = linear(plrnn" in after
    assert "fused into it: hrf" in out.split("== decisions ==")[1]


# ---- the compiled model -------------------------------------------------------------------------

def test_state_dict_keys_and_round_trip(pair):
    model, ref = pair
    assert list(model.state_dict()) == list(ref.state_dict())
    assert "hrf.kernel" in model.state_dict()
    assert model.kernels["plrnn"] == "tvm:recurrence/sequential + conv 'hrf'"
    # compiled -> a fresh reference, and back into a fresh compiled model
    with torch.no_grad():
        model.hrf.kernel.mul_(1.5)
    ref2 = build_reference(model.source_graph)
    ref2.load_state_dict(model.state_dict())
    model2 = ssmc.compile(SPEC, "cpu", seqlen=64)
    model2.load_state_dict(ref2.state_dict())
    for k, v in model.state_dict().items():
        torch.testing.assert_close(ref2.state_dict()[k], v, rtol=0, atol=0)
        torch.testing.assert_close(model2.state_dict()[k], v, rtol=0, atol=0)
    s = torch.randn(2, 20, 3)
    with torch.no_grad():
        torch.testing.assert_close(model2(s), ref2(s), **TOL)
        torch.testing.assert_close(model(s), ref2(s), **TOL)
    model.load_state_dict(ref.state_dict())  # the fixture's weights again


@pytest.mark.parametrize("L", [1, 7, 1000])
def test_forward_matches_the_reference(pair, L):
    """At inference the kernel computes the convolution itself (the conv module's forward is
    not called) and the result is the reference's."""
    model, ref = pair
    entry = model.graph.nodes[0].meta["run"]
    calls = []

    def spy(*a, **k):
        calls.append(k.get("hrf"))
        return entry[1](*a, **k)

    model.graph.nodes[0].meta["run"] = (entry[0], spy, entry[2])
    handle = model.hrf.register_forward_hook(lambda *a: pytest.fail("the conv module ran"))
    try:
        s = torch.randn(3, L, 3)
        with torch.no_grad():
            got, want = model(s), ref(s)
    finally:
        model.graph.nodes[0].meta["run"] = entry
        handle.remove()
    assert len(calls) == 1 and calls[0] is model.hrf.kernel
    assert got.shape == (3, L, 10)
    torch.testing.assert_close(got, want, **TOL)


@pytest.mark.parametrize("learnable", [False, True])
def test_gradients_match_the_reference(learnable):
    """Training: the kernel's autograd path (adjoint recurrence, the convolution by FFT) gives
    the reference's gradients, for the conv kernel too when it is learnable."""
    model, ref = _pair(_spec(learnable=learnable))
    model.train(), ref.train()
    assert model.hrf.kernel.requires_grad is learnable
    s = torch.randn(2, 50, 3)
    s1, s2 = s.clone().requires_grad_(), s.clone().requires_grad_()
    g = torch.randn(2, 50, 10)
    (model(s1) * g).sum().backward()
    (ref(s2) * g).sum().backward()
    torch.testing.assert_close(s1.grad, s2.grad, **TOL)
    got, want = dict(model.named_parameters()), dict(ref.named_parameters())
    for name, p in want.items():
        if p.grad is None:
            assert got[name].grad is None, name
            assert name == "hrf.kernel" and not learnable
            continue
        torch.testing.assert_close(got[name].grad, p.grad, **TOL, msg=name)


def test_fp64_runs_the_reference_node_and_its_epilogue(pair):
    """The kernel takes no fp64: the reference runs the recurrence and then the folded conv."""
    model, ref = pair
    m64, r64 = _pair(SPEC)
    m64.double(), r64.double()
    m64.load_state_dict(r64.state_dict())
    s = torch.randn(2, 17, 3, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(m64(s), r64(s), rtol=1e-7, atol=1e-9)
