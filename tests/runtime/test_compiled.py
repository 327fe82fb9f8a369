"""`ssmc.compile`: the compiled model keeps the reference model's parameter names, runs the
chosen kernels (the TVM selective scan on the CPU) and matches the eager oracle; with gradients
enabled the SSM nodes go through the differentiable ssmc:: ops instead of the direct call."""

from __future__ import annotations

import os

import pytest
import torch

import ssmc
from ssmc.paths import zoo_dir
from ssmc.runtime.compiled import CompiledModel
from ssmc.semantics.model import build_reference

FP32 = dict(rtol=6e-4, atol=2e-3)
VOCAB = 256  # mamba.yaml / mamba2.yaml


def _count_kernel_calls(model: CompiledModel) -> list:
    """Wrap every compiled kernel of `model` so that calls are counted (one list entry each)."""
    calls = []
    for _, node, _ in model.graph.walk():
        if "run" not in node.meta:
            continue
        executor, fn, config = node.meta["run"]

        def counted(*a, _fn=fn, **k):
            calls.append(_fn)
            return _fn(*a, **k)
        node.meta["run"] = (executor, counted, config)
    return calls


@pytest.fixture(scope="module")
def mamba_cpu():
    torch.manual_seed(1)
    model = ssmc.compile(zoo_dir() / "mamba.yaml", "cpu", seqlen=64, batch=2).eval()
    return model, _count_kernel_calls(model)


@pytest.fixture(scope="module")
def mamba_ref(mamba_cpu):
    torch.manual_seed(2)
    return build_reference(mamba_cpu[0].source_graph).eval()


@pytest.fixture(scope="module")
def mamba2_cpu():
    torch.manual_seed(3)
    return ssmc.compile(zoo_dir() / "mamba2.yaml", "cpu", seqlen=64, batch=2).eval()


def test_same_parameter_names(mamba_cpu, mamba_ref):
    model, _ = mamba_cpu
    assert set(model.state_dict()) == set(mamba_ref.state_dict())
    assert {k: v.shape for k, v in model.state_dict().items()} == \
        {k: v.shape for k, v in mamba_ref.state_dict().items()}
    assert [n for n, _ in model.named_parameters()] == [n for n, _ in mamba_ref.named_parameters()]


def test_summary_names_the_kernels(mamba_cpu, mamba2_cpu):
    model, _ = mamba_cpu
    s = model.summary()
    assert "mamba compiled for cpu" in s
    assert "layers.*.ssm" in s and "tvm:selective_ssm/mamba1/sequential" in s
    assert model.kernels == {"layers.*.ssm": "tvm:selective_ssm/mamba1/sequential"}
    assert mamba2_cpu.kernels == {"layers.*.ssm": "tvm:selective_ssm/ssd/sequential"}
    # an algorithm with no kernel on this backend (no chunked TVM SSD): the reference runs
    # it, and the summary says so
    text = (zoo_dir() / "mamba2.yaml").read_text().replace(
        "chunk_size: 64\n", "chunk_size: 64\n        algorithm: chunked\n")
    chunked = ssmc.compile(text, "cpu", seqlen=64, batch=2)
    assert chunked.kernels == {"layers.*.ssm": "reference"}
    assert "layers.*.ssm" in chunked.summary() and "reference" in chunked.summary()


@pytest.mark.parametrize("L", [1, 7, 64])
def test_mamba_matches_reference_loaded_from_it(mamba_cpu, mamba_ref, L):
    """reference -> compiled: the compiled model takes the reference's weights."""
    model, calls = mamba_cpu
    model.load_state_dict(mamba_ref.state_dict())
    tokens = torch.randint(0, VOCAB, (2, L))
    n0 = len(calls)
    with torch.no_grad():
        out = model(tokens)
        want = mamba_ref(tokens)
    assert len(calls) - n0 == 2  # the TVM kernel ran, once per layer
    assert out.shape == want.shape == (2, L, VOCAB)
    torch.testing.assert_close(out, want, **FP32)


@pytest.mark.parametrize("L", [1, 7, 64])
def test_reference_matches_compiled_loaded_from_it(mamba_cpu, L):
    """compiled -> reference: a fresh reference model takes the compiled model's weights."""
    model, calls = mamba_cpu
    torch.manual_seed(100 + L)
    with torch.no_grad():  # weights the reference init would not produce
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    ref = build_reference(model.source_graph).eval()
    ref.load_state_dict(model.state_dict())
    tokens = torch.randint(0, VOCAB, (2, L))
    n0 = len(calls)
    with torch.no_grad():
        out = model(tokens)
        want = ref(tokens)
    assert len(calls) - n0 == 2
    torch.testing.assert_close(out, want, **FP32)


@pytest.mark.parametrize("L", [1, 7, 64])
def test_mamba2_matches_reference(mamba2_cpu, L):
    model = mamba2_cpu
    # the fused graph: the gate node went into the SSD node
    names = [q for q, _, _ in model.graph.walk()]
    assert "layers.*.gated" not in names
    torch.manual_seed(4)
    ref = build_reference(model.source_graph).eval()
    assert set(ref.state_dict()) == set(model.state_dict())
    model.load_state_dict(ref.state_dict())
    tokens = torch.randint(0, VOCAB, (2, L))
    with torch.no_grad():
        torch.testing.assert_close(model(tokens), ref(tokens), **FP32)
    # and the other direction
    ref2 = build_reference(model.source_graph).eval()
    ref2.load_state_dict(model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(ref2(tokens), model(tokens), **FP32)


def test_gradients_reach_every_parameter(mamba_cpu, mamba_ref):
    model, calls = mamba_cpu
    model.load_state_dict(mamba_ref.state_dict())
    model.zero_grad(set_to_none=True)
    mamba_ref.zero_grad(set_to_none=True)
    tokens = torch.randint(0, VOCAB, (2, 7))
    n0 = len(calls)
    loss = model(tokens).pow(2).mean()
    assert len(calls) == n0  # grad enabled: the nodes ran ssmc::selective_scan, not the call
    loss.backward()
    params = dict(model.named_parameters())
    assert params
    for name, p in params.items():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
    # the same gradients as the reference model's
    mamba_ref(tokens).pow(2).mean().backward()
    for name, p in mamba_ref.named_parameters():
        torch.testing.assert_close(params[name].grad, p.grad, rtol=1e-4, atol=1e-6, msg=name)
    model.zero_grad(set_to_none=True)
    mamba_ref.zero_grad(set_to_none=True)


def test_grad_disabled_uses_kernel_even_in_train_mode(mamba_cpu):
    model, calls = mamba_cpu
    model.train()
    try:
        n0 = len(calls)
        with torch.no_grad():
            model(torch.randint(0, VOCAB, (2, 5)))
        assert len(calls) - n0 == 2
    finally:
        model.eval()


def test_compile_takes_yaml_text_and_a_graph():
    from ssmc.ir.spec import load_spec

    text = (zoo_dir() / "s4d.yaml").read_text()
    a = ssmc.compile(text, "sm_90", seqlen=16384)
    b = ssmc.compile(load_spec(text), "sm_90", seqlen=16384)
    assert isinstance(a, CompiledModel) and isinstance(b, CompiledModel)
    assert a.target.name == "sm_90" and a.bindings == {"batch": 2, "seqlen": 16384}
    assert set(a.kernels) == set(b.kernels) == {"layers.*.ssm"}


def test_compile_unknown_target_is_a_user_error():
    from ssmc.errors import SsmcError

    with pytest.raises(SsmcError, match="did you mean 'sm_90'"):
        ssmc.compile(zoo_dir() / "mamba.yaml", "sm_9")


def test_compile_binds_other_runtime_dims():
    """chimera has a run-time dim `variates`: the shape bucket needs its value."""
    from ssmc.errors import SsmcError

    with pytest.raises(SsmcError, match="variates"):
        ssmc.compile(zoo_dir() / "chimera.yaml", "cpu", seqlen=16)
    model = ssmc.compile(zoo_dir() / "chimera.yaml", "cpu", seqlen=16, dims={"variates": 3})
    assert model.bindings == {"batch": 2, "seqlen": 16, "variates": 3}
    assert model.kernels  # the ssm2d node got an algorithm (run by the reference on the CPU)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float64], ids=["bf16", "fp64"])
def test_compile_dtype_is_the_models_dtype(dtype, tmp_path):
    """dtype= casts the parameters as well as choosing the kernels' io dtype, and survives
    save / load; the state dict still moves to and from the fp32 reference."""
    from ssmc.ir.spec import load_spec

    graph = load_spec(zoo_dir() / "mamba.yaml", dims={"d_model": 16, "n_layers": 1})
    torch.manual_seed(4)
    ref = build_reference(graph).eval()
    model = ssmc.compile(graph, "cpu", dtype=dtype, seqlen=16).eval()
    assert {p.dtype for p in model.parameters()} == {dtype}
    model.load_state_dict(ref.state_dict())
    tokens = torch.randint(0, VOCAB, (2, 9))
    with torch.no_grad():
        out = model(tokens)
        want = ref(tokens)
    assert out.dtype == dtype
    tol = dict(rtol=3e-2, atol=5e-2 * want.abs().max().item()) if dtype == torch.bfloat16 \
        else dict(rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.float(), want, **tol)
    model.save(tmp_path / "m")
    loaded = ssmc.load(tmp_path / "m").eval()
    assert {p.dtype for p in loaded.parameters()} == {dtype}
    with torch.no_grad():
        torch.testing.assert_close(loaded(tokens), out, rtol=0, atol=0)


# ---- S4D with the Triton backend (the interpreter runs it on the CPU) --------------------------

needs_interpreter = pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1",
                                       reason="Triton on CPU tensors needs TRITON_INTERPRET=1")
S4D_INPUT = {"s4d_complex": 1, "s4d": 3}  # d_input of the zoo spec


def _s4d_for_sm90(spec: str, bucket: int):
    """(compiled for sm_90, the reference with its weights), small enough for the interpreter."""
    from ssmc.ir.spec import load_spec

    graph = load_spec(zoo_dir() / f"{spec}.yaml", dims={"d_model": 8, "d_state": 8})
    torch.manual_seed(5)
    model = ssmc.compile(graph, "sm_90", seqlen=bucket).eval()
    ref = build_reference(model.source_graph).eval()
    ref.load_state_dict(model.state_dict())
    return model, ref


@needs_interpreter
@pytest.mark.parametrize("spec", list(S4D_INPUT))
@pytest.mark.parametrize("bucket, algorithm", [(64, "sequential"), (16384, "fft")])
def test_s4d_on_triton_runs_the_triton_kernel(spec, bucket, algorithm):
    """Compiled for sm_90, S4D (complex and real states) runs the Triton recurrence for a
    short bucket and the Vandermonde kernel + torch.fft for a long one, not the reference."""
    model, ref = _s4d_for_sm90(spec, bucket)
    assert model.kernels == {"layers.*.ssm": f"triton:diagonal_ssm/{algorithm}"}
    calls = _count_kernel_calls(model)
    x = torch.randn(2, 7, S4D_INPUT[spec])
    with torch.no_grad():
        out, want = model(x), ref(x)
    assert len(calls) == 2  # the Triton kernel ran, once per layer
    torch.testing.assert_close(out, want, **FP32)


@needs_interpreter
def test_s4d_on_triton_gradients_take_the_torch_fft_path():
    """With gradients the node leaves the direct kernel call (`fn`, inference only) for
    ssmc::s4d_vandermonde (the Triton Vandermonde kernel and its backward, counted in
    tests/codegen/test_vandermonde_bwd.py) and torch's FFT convolution; the gradients are the
    reference's."""
    model, ref = _s4d_for_sm90("s4d_complex", 64)
    calls = _count_kernel_calls(model)
    x = torch.randn(2, 7, 1)
    model(x).pow(2).mean().backward()
    ref(x).pow(2).mean().backward()
    assert not calls
    grads = {n: p.grad for n, p in model.named_parameters()}
    for name, p in ref.named_parameters():
        assert grads[name] is not None, name
        torch.testing.assert_close(grads[name], p.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_s4d_on_triton_without_a_gpu_or_the_interpreter_runs_torch(monkeypatch):
    """A model compiled for a GPU but run on CPU tensors without the interpreter: the Triton
    kernels cannot run, the node takes the torch FFT path (the same values)."""
    model, ref = _s4d_for_sm90("s4d_complex", 64)
    calls = _count_kernel_calls(model)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    x = torch.randn(2, 7, 1)
    with torch.no_grad():
        out, want = model(x), ref(x)
    assert not calls
    torch.testing.assert_close(out, want, **FP32)
