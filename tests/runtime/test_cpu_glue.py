"""The CPU glue paths: ssmc.runtime.gemm.linear (F.linear's meaning whichever GEMM library
runs it) and the compiled models' Linear, conv1d and rmsnorm nodes on them."""

import pytest
import torch
import torch.nn.functional as F

from ssmc.runtime import gemm


@pytest.mark.parametrize("shape,n,bias", [((1, 300, 64), 96, True), ((2, 70, 16), 48, False),
                                          ((5, 33), 7, True), ((1, 1, 64), 32, True)])
def test_linear_is_f_linear(shape, n, bias):
    x = torch.randn(*shape)
    w = torch.randn(n, shape[-1])
    b = torch.randn(n) if bias else None
    torch.testing.assert_close(gemm.linear(x, w, b), F.linear(x, w, b), rtol=1e-5, atol=1e-5)
    xs = torch.randn(*shape[:-1], shape[-1] + 5)[..., 5:]  # a strided view, as the mixers pass
    torch.testing.assert_close(gemm.linear(xs, w, b), F.linear(xs, w, b), rtol=1e-5, atol=1e-5)


def test_gradients_and_other_dtypes_take_f_linear():
    x = torch.randn(200, 16, requires_grad=True)
    w = torch.randn(8, 16, requires_grad=True)
    gemm.linear(x, w).sum().backward()
    assert x.grad is not None and w.grad is not None
    x64, w64 = torch.randn(200, 16, dtype=torch.float64), torch.randn(8, 16, dtype=torch.float64)
    y = gemm.linear(x64, w64)
    assert y.dtype == torch.float64
    torch.testing.assert_close(y, F.linear(x64, w64))


def _compiled_matches_reference(spec: str, batch: int, seqlen: int):
    """A CPU-compiled zoo model with its reference's weights, checked against it at inference;
    (model, tokens)."""
    import ssmc
    from ssmc.paths import zoo_dir
    from ssmc.semantics.model import build_reference

    model = ssmc.compile(zoo_dir() / spec, "cpu", seqlen=seqlen, batch=batch).eval()
    ref = build_reference(model.source_graph).eval()
    model.load_state_dict(ref.state_dict())
    tokens = torch.randint(0, 256, (batch, seqlen))
    with torch.no_grad():
        torch.testing.assert_close(model(tokens), ref(tokens), rtol=6e-4, atol=2e-3)
    return model, tokens


def test_compiled_model_linears_match_the_reference():
    """A CPU-compiled model runs its Linear nodes through gemm.linear; same logits."""
    _compiled_matches_reference("mamba.yaml", 1, 128)


def test_compiled_mamba2_glue_runs_the_tvm_conv_and_norm(monkeypatch):
    """At inference the conv1d and rmsnorm nodes of a CPU-compiled model run their TVM kernels
    (same logits as the reference); with gradients the reference runs them."""
    from ssmc.codegen.tvm import decode

    calls = {"conv": 0, "norm": 0}
    conv, norm = decode.causal_conv1d, decode.rmsnorm

    def spy_conv(*a, **k):
        calls["conv"] += 1
        return conv(*a, **k)

    def spy_norm(*a, **k):
        calls["norm"] += 1
        return norm(*a, **k)

    monkeypatch.setattr(decode, "causal_conv1d", spy_conv)
    monkeypatch.setattr(decode, "rmsnorm", spy_norm)
    model, tokens = _compiled_matches_reference("mamba2.yaml", 2, 33)
    assert calls["conv"] == 2 and calls["norm"] >= 3  # 2 layers: conv each, norms + final
    calls.update(conv=0, norm=0)
    model(tokens).sum().backward()  # gradients: the reference's differentiable glue
    assert calls == {"conv": 0, "norm": 0}
    assert model.embedding.weight.grad is not None


@pytest.mark.parametrize("b,L,c,k", [(1, 1, 8, 4), (2, 7, 16, 4), (3, 70, 33, 3), (1, 5, 4, 8)])
@pytest.mark.parametrize("act", ["silu", "identity"])
@pytest.mark.parametrize("bias", [True, False])
def test_shifted_causal_conv_matches_the_reference_with_gradients(b, L, c, k, act, bias):
    """The training path of the compiled conv1d node: k shifted multiply-adds, same values and
    gradients as semantics.glue.causal_conv1d (torch's depthwise conv)."""
    from ssmc.codegen.composite.causal_conv import causal_conv1d_shifted
    from ssmc.semantics.glue import causal_conv1d

    torch.manual_seed(0)
    leaves = [torch.randn(b, L, c), torch.randn(c, 1, k)] + ([torch.randn(c)] if bias else [])
    leaves = [t.requires_grad_() for t in leaves]
    want = causal_conv1d(leaves[0], leaves[1], leaves[2] if bias else None,
                         None if act == "identity" else act)
    got = causal_conv1d_shifted(leaves[0], leaves[1], leaves[2] if bias else None, act)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    gy = torch.randn_like(want)
    g_want = torch.autograd.grad(want, leaves, gy)
    g_got = torch.autograd.grad(got, leaves, gy)
    for a, e in zip(g_got, g_want):
        torch.testing.assert_close(a, e, rtol=1e-4, atol=1e-5)


def test_compiled_conv1d_trains_on_the_shifted_conv(monkeypatch):
    """With gradients the compiled mamba's conv1d nodes take the shifted path (not torch's
    depthwise conv), and the model's gradients equal the reference's."""
    import ssmc
    from ssmc.codegen.composite import causal_conv
    from ssmc.paths import zoo_dir
    from ssmc.semantics.model import build_reference

    model = ssmc.compile(zoo_dir() / "mamba.yaml", "cpu", seqlen=16, batch=2)
    ref = build_reference(model.source_graph)
    model.load_state_dict(ref.state_dict())
    calls = []
    orig = causal_conv.causal_conv1d_shifted
    monkeypatch.setattr(causal_conv, "causal_conv1d_shifted",
                        lambda *a, **k: calls.append(1) or orig(*a, **k))
    tok = torch.randint(0, 256, (2, 16))
    model(tok).float().pow(2).mean().backward()
    ref(tok).float().pow(2).mean().backward()
    assert len(calls) == 2  # both layers' conv1d
    grads = dict(ref.named_parameters())
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, grads[name].grad, rtol=1e-3, atol=1e-5)
