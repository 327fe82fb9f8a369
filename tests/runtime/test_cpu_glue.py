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


def _spy(monkeypatch, calls: dict, name: str, module, attr: str):
    real = getattr(module, attr)

    def spy(*a, **k):
        calls[name] += 1
        return real(*a, **k)

    monkeypatch.setattr(module, attr, spy)


def test_compiled_mamba2_glue_runs_the_tvm_conv_and_norm(monkeypatch):
    """At inference the conv1d and rmsnorm nodes of a CPU-compiled model run their TVM kernels
    (same logits as the reference); with gradients the same forward kernels and their TVM
    backward kernels."""
    from ssmc.codegen.composite import causal_conv_train, rmsnorm_train
    from ssmc.codegen.tvm import decode

    calls = dict.fromkeys(("conv", "norm", "conv_bwd", "norm_bwd"), 0)
    _spy(monkeypatch, calls, "conv", decode, "causal_conv1d")
    _spy(monkeypatch, calls, "norm", decode, "rmsnorm")
    _spy(monkeypatch, calls, "conv_bwd", causal_conv_train, "causal_conv1d_bwd")
    _spy(monkeypatch, calls, "norm_bwd", rmsnorm_train, "rmsnorm_bwd")
    model, tokens = _compiled_matches_reference("mamba2.yaml", 2, 33)
    assert calls["conv"] == 2 and calls["norm"] >= 3  # 2 layers: conv each, norms + final
    assert calls["conv_bwd"] == calls["norm_bwd"] == 0
    norms = calls["norm"]
    calls.update(conv=0, norm=0)
    model(tokens).sum().backward()
    assert calls == {"conv": 2, "norm": norms, "conv_bwd": 2, "norm_bwd": norms}
    assert model.embedding.weight.grad is not None


@pytest.mark.parametrize("spec", ["mamba.yaml", "mamba2.yaml"])
def test_compiled_glue_trains_like_the_reference(spec):
    """With gradients the compiled model's conv1d and rmsnorm nodes run the TVM forward and
    backward kernels, and every parameter's gradient equals the reference's."""
    import ssmc
    from ssmc.paths import zoo_dir
    from ssmc.semantics.model import build_reference

    model = ssmc.compile(zoo_dir() / spec, "cpu", seqlen=16, batch=2)
    ref = build_reference(model.source_graph)
    model.load_state_dict(ref.state_dict())
    tok = torch.randint(0, 256, (2, 16))
    model(tok).float().pow(2).mean().backward()
    ref(tok).float().pow(2).mean().backward()
    grads = dict(ref.named_parameters())
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, grads[name].grad, rtol=1e-3, atol=1e-5, msg=name)


def _glue_op_cases():
    g = torch.Generator().manual_seed(0)

    def r(*s, grad=True):
        return torch.randn(*s, generator=g).requires_grad_(grad)

    x, w, b = r(2, 7, 5), r(5, 1, 3), r(5)
    h, z, nw = r(3, 4, 8), r(3, 4, 8), r(8)
    return [
        (torch.ops.ssmc.causal_conv1d.default, (x, w, b, "silu", "")),
        (torch.ops.ssmc.causal_conv1d.default, (x, w, None, "identity", "")),
        (torch.ops.ssmc.causal_conv1d_bwd.default,
         (r(2, 7, 5, grad=False), x.detach(), w.detach(), b.detach(), "silu", "", True, True,
          True)),
        (torch.ops.ssmc.causal_conv1d_bwd.default,
         (r(2, 7, 5, grad=False), x.detach(), w.detach(), None, "identity", "", False, True,
          False)),
        (torch.ops.ssmc.rmsnorm.default, (h, nw, None, 1e-5, 1)),
        (torch.ops.ssmc.rmsnorm.default, (h, nw, z, 1e-5, 2)),
        (torch.ops.ssmc.rmsnorm_bwd.default,
         (r(3, 4, 8, grad=False), h.detach(), nw.detach(), z.detach(), 1e-5, 2)),
    ]


def test_glue_ops_opcheck():
    """The glue kernels' ops (forward ones with their autograd formulas) pass opcheck."""
    import ssmc.codegen.composite.causal_conv_train  # noqa: F401  (defines the ops)
    import ssmc.codegen.composite.rmsnorm_train  # noqa: F401

    for op, args in _glue_op_cases():
        torch.library.opcheck(op, args)


def test_compiled_mamba2_trains_under_torch_compile_on_the_glue_kernels(monkeypatch):
    """torch.compile(fullgraph=True) of a CPU-compiled mamba2's training step: no graph
    break, the conv1d and rmsnorm nodes run their TVM forward and backward kernels (ops), and
    the gradients equal the eager reference's."""
    import ssmc
    from ssmc.codegen.composite import causal_conv_train, rmsnorm_train
    from ssmc.paths import zoo_dir
    from ssmc.semantics.model import build_reference

    model = ssmc.compile(zoo_dir() / "mamba2.yaml", "cpu", seqlen=16, batch=2)
    ref = build_reference(model.source_graph)
    model.load_state_dict(ref.state_dict())
    calls = dict.fromkeys(("conv_bwd", "norm_bwd"), 0)
    _spy(monkeypatch, calls, "conv_bwd", causal_conv_train, "causal_conv1d_bwd")
    _spy(monkeypatch, calls, "norm_bwd", rmsnorm_train, "rmsnorm_bwd")
    torch._dynamo.reset()
    tok = torch.randint(0, 256, (2, 16))
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    compiled(tok).float().pow(2).mean().backward()
    torch._dynamo.reset()
    ref(tok).float().pow(2).mean().backward()
    assert calls["conv_bwd"] == 2 and calls["norm_bwd"] >= 3
    grads = dict(ref.named_parameters())
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, grads[name].grad, rtol=1e-3, atol=1e-5, msg=name)
