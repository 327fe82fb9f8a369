"""ssmc.accelerate on transformers Mamba / Mamba-2: the same logits and greedy generations as
transformers' own eager path, the cache filled as transformers fills it, weights shared,
ssmc.restore gives the original forward back."""

import pytest
import torch

import ssmc
from ssmc.hf import accelerated_mixers, call_counts, head_calls

TOL = dict(rtol=6e-4, atol=2e-3)  # fp32 (DESIGN.md: mamba-ssm's own test tolerances)
TARGETS = ["tvm", "reference"]


def _logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


def _generate(model, prompt, n=20):
    with torch.no_grad():
        return model.generate(prompt, max_new_tokens=n, min_new_tokens=n, do_sample=False)


def _fast_only(model):
    counts = call_counts(model)
    assert counts and all(c["fallback"] == 0 and c["fast"] > 0 for c in counts.values()), counts


@pytest.mark.parametrize("target", TARGETS)
def test_logits_and_generation_match(model, ids, target):
    ref = _logits(model, ids)
    gen_ref = _generate(model, ids[:1, :12])
    ssmc.accelerate(model, target=target)
    assert set(accelerated_mixers(model).values()) == {target}
    torch.testing.assert_close(_logits(model, ids), ref, **TOL)
    gen = _generate(model, ids[:1, :12])
    assert torch.equal(gen, gen_ref), (gen, gen_ref)
    _fast_only(model)  # prefill and every decode step took ssmc's path
    if target == "tvm":  # the head of each decode step: the one-row gemv kernel
        head = head_calls(model)
        assert head is not None and head["fast"] >= 19 and head["fallback"] == 0, head
    else:
        assert head_calls(model) is None


def test_batched_generation(mamba, ids):
    prompt = ids[:, :10]
    want = _generate(mamba, prompt, 16)
    ssmc.accelerate(mamba)
    assert torch.equal(_generate(mamba, prompt, 16), want)


def test_cache_filled_as_transformers_does(model, ids):
    with torch.no_grad():
        want = model(ids[:, :23], use_cache=True).cache_params
        ssmc.accelerate(model)
        got = model(ids[:, :23], use_cache=True).cache_params
    for lw, lg in zip(want.layers, got.layers):
        assert lg.conv_states[0].shape == lw.conv_states[0].shape
        assert lg.conv_states[0].dtype == lw.conv_states[0].dtype
        torch.testing.assert_close(lg.conv_states[0], lw.conv_states[0], **TOL)
        assert lg.recurrent_states[0].shape == lw.recurrent_states[0].shape
        torch.testing.assert_close(lg.recurrent_states[0], lw.recurrent_states[0], **TOL)


def test_decode_steps_match_transformers(model, ids):
    """Prefill, then one token at a time through the cache: logits of every step."""
    def run():
        outs = []
        with torch.no_grad():
            out = model(ids[:, :9], use_cache=True)
            cache = out.cache_params
            outs.append(out.logits)
            for t in range(9, 17):
                out = model(ids[:, t:t + 1], cache_params=cache, use_cache=True)
                outs.append(out.logits)
        return outs

    want = run()
    ssmc.accelerate(model)
    for got, ref in zip(run(), want):
        torch.testing.assert_close(got, ref, **TOL)
    _fast_only(model)


def test_restore_gives_back_the_original_forward(model, ids):
    ref = _logits(model, ids)
    ssmc.accelerate(model)
    assert accelerated_mixers(model)
    assert ssmc.restore(model) is model
    assert not accelerated_mixers(model)
    for m in model.modules():
        assert "forward" not in m.__dict__ and "_ssmc_accel" not in m.__dict__
    assert torch.equal(_logits(model, ids), ref)


def test_weights_are_shared_not_copied(mamba, ids):
    before = {n: p.data_ptr() for n, p in mamba.named_parameters()}
    ssmc.accelerate(mamba)
    after = {n: p.data_ptr() for n, p in mamba.named_parameters()}
    assert before == after
    # an in-place edit of the weights is seen by the accelerated model (A is derived again)
    with torch.no_grad():
        for layer in mamba.backbone.layers:
            layer.mixer.A_log.add_(0.5)
            layer.mixer.D.mul_(-1.0)
    got = _logits(mamba, ids)
    ssmc.restore(mamba)
    torch.testing.assert_close(got, _logits(mamba, ids), **TOL)


def test_gradients_fall_back_to_transformers(mamba, ids):
    ssmc.accelerate(mamba)
    out = mamba(ids[:, :8]).logits  # grad enabled, parameters require grad
    out.sum().backward()
    assert mamba.backbone.layers[0].mixer.A_log.grad is not None
    assert all(c["fallback"] > 0 for c in call_counts(mamba).values())


def test_base_model_and_retarget(mamba, ids):
    base = mamba.backbone
    with torch.no_grad():
        want = base(ids).last_hidden_state
    ssmc.accelerate(base, target="reference")
    ssmc.accelerate(base)  # again: re-targets, does not stack
    assert set(accelerated_mixers(base).values()) == {"tvm"}
    with torch.no_grad():
        torch.testing.assert_close(base(ids).last_hidden_state, want, **TOL)


def test_mamba2_dt_limit(build, ids):
    model = build("mamba2", time_step_limit=(0.01, 0.05))
    ref = _logits(model, ids)
    ssmc.accelerate(model)
    torch.testing.assert_close(_logits(model, ids), ref, **TOL)


def test_bad_arguments():
    with pytest.raises(ssmc.SsmcError, match="no transformers MambaMixer"):
        ssmc.accelerate(torch.nn.Linear(4, 4))
    with pytest.raises(ssmc.SsmcError, match="torch.nn.Module"):
        ssmc.accelerate("state-spaces/mamba-130m-hf")


def test_bad_target(mamba, monkeypatch):
    with pytest.raises(ssmc.SsmcError, match="target must be one of"):
        ssmc.accelerate(mamba, target="cuda")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ssmc.SsmcError, match="'triton' runs CUDA"):
        ssmc.accelerate(mamba, target="triton")
    assert not accelerated_mixers(mamba)


@pytest.mark.slow  # ~20 s of CPU in Triton's interpreter
def test_triton_target_under_the_interpreter(model, ids):
    """target='triton' (the GPU path: scans on ssmc's Triton kernels, glue and decode steps in
    torch), run on the CPU by Triton's interpreter (tests/conftest.py sets TRITON_INTERPRET=1
    unless SSMC_GPU_TESTS=1)."""
    import os

    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("needs TRITON_INTERPRET=1 (or a GPU: see the gpu tier)")
    prompt = ids[:1, :10]
    ref, gen_ref = _logits(model, ids[:, :16]), _generate(model, prompt, 4)
    ssmc.accelerate(model, target="triton")
    torch.testing.assert_close(_logits(model, ids[:, :16]), ref, **TOL)
    assert torch.equal(_generate(model, prompt, 4), gen_ref)
    _fast_only(model)


@pytest.mark.gpu
def test_gpu_auto_target_is_triton(model, ids):
    """On a CUDA device, 'auto' runs the scans on Triton; logits and generations match."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    model = model.cuda()
    ids = ids.cuda()
    ref, gen_ref = _logits(model, ids), _generate(model, ids[:1, :12])
    ssmc.accelerate(model)
    assert set(accelerated_mixers(model).values()) == {"triton"}
    torch.testing.assert_close(_logits(model, ids), ref, **TOL)
    assert torch.equal(_generate(model, ids[:1, :12]), gen_ref)
    _fast_only(model)


def test_multi_token_continuation_through_the_cache(model, ids):
    """A second multi-token chunk after a prefill (chunked prefill) equals feeding its tokens one
    by one; for Mamba-2 it also equals transformers (whose Mamba-1 torch path drops the SSM
    state in this case: ssmc keeps it)."""
    ssmc.accelerate(model)
    with torch.no_grad():
        cache = model(ids[:, :9], use_cache=True).cache_params
        chunk = model(ids[:, 9:14], cache_params=cache, use_cache=True).logits
        cache = model(ids[:, :9], use_cache=True).cache_params
        steps = torch.cat([model(ids[:, t:t + 1], cache_params=cache, use_cache=True).logits
                           for t in range(9, 14)], dim=1)
    torch.testing.assert_close(chunk, steps, **TOL)
    if "Mamba2" in type(model).__name__:
        ssmc.restore(model)
        with torch.no_grad():
            cache = model(ids[:, :9], use_cache=True).cache_params
            want = model(ids[:, 9:14], cache_params=cache, use_cache=True).logits
        torch.testing.assert_close(chunk, want, **TOL)


def test_left_padded_batch(model):
    """Two prompts of different lengths, left-padded: the attention mask zeroes the padding
    as in transformers, and the greedy continuations match."""
    ids = torch.randint(3, 128, (2, 12))
    mask = torch.ones_like(ids)
    ids[0, :4] = model.config.pad_token_id
    mask[0, :4] = 0
    with torch.no_grad():
        want = model.generate(ids, attention_mask=mask, max_new_tokens=8, min_new_tokens=8,
                              do_sample=False)
        ssmc.accelerate(model)
        got = model.generate(ids, attention_mask=mask, max_new_tokens=8, min_new_tokens=8,
                             do_sample=False)
    assert torch.equal(got, want)


def test_bfloat16_model(mamba, ids):
    model = mamba.to(torch.bfloat16)
    ref = _logits(model, ids[:, :16])
    gen_ref = _generate(model, ids[:1, :10], 6)
    ssmc.accelerate(model)
    torch.testing.assert_close(_logits(model, ids[:, :16]), ref, rtol=3e-2, atol=1e-1)
    gen = _generate(model, ids[:1, :10], 6)
    assert gen.shape == gen_ref.shape  # bf16 rounding may flip a near-tie; the path must run


def test_deepcopy_of_an_accelerated_model(mamba, ids):
    import copy

    ref = _logits(mamba, ids)
    ssmc.accelerate(mamba)
    twin = copy.deepcopy(mamba)
    with torch.no_grad():
        for layer in twin.backbone.layers:  # the copy's own weights, not the original's
            layer.mixer.D.mul_(-1.0)
    assert accelerated_mixers(twin)
    torch.testing.assert_close(_logits(mamba, ids), ref, **TOL)
    assert not torch.allclose(_logits(twin, ids), ref, **TOL)
    ssmc.restore(twin)
    ssmc.restore(mamba)


def _step_logits(model, prompt, steps):
    outs = []
    with torch.no_grad():
        out = model(prompt, use_cache=True)
        cache, tok = out.cache_params, out.logits[:, -1:].argmax(-1)
        for _ in range(steps):
            out = model(tok, cache_params=cache, use_cache=True)
            outs.append(out.logits)
            tok = out.logits[:, -1:].argmax(-1)
    return outs


@pytest.mark.parametrize("kind", ["mamba", "mamba2"])
@pytest.mark.parametrize("biases", [False, True])
def test_one_sequence_decodes_each_layer_in_one_kernel(build, ids, kind, biases):
    """One sequence: every layer's decode step is one fused TVM kernel (decode_layer_tir); its
    logits match transformers' step by step, with and without the optional biases."""
    kw = dict(use_bias=biases, use_conv_bias=biases)
    model = build(kind, **kw)
    if biases:
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith("bias"):
                    p.copy_(0.1 * torch.randn_like(p))
    prompt = ids[:1, :7]
    want = _step_logits(model, prompt, 6)
    ssmc.accelerate(model)
    got = _step_logits(model, prompt, 6)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, **TOL)
    counts = call_counts(model)
    mixers = [c for name, c in counts.items() if name.endswith("mixer")]
    assert mixers and all(c["fused"] == 6 and c["fallback"] == 0 for c in mixers), counts


def test_fused_layer_step_equals_the_kernel_by_kernel_step(build, ids):
    """The fused layer and the separate kernels are the same statements: identical numbers."""
    from ssmc.hf import accelerated as acc

    model = build("mamba")
    ssmc.accelerate(model)
    prompt = ids[:1, :9]
    fused = _step_logits(model, prompt, 4)
    for m in model.modules():
        st = m.__dict__.get(acc._ATTR)
        if st is not None and isinstance(st.raw, dict):
            st.raw["layer"] = None
    split = _step_logits(model, prompt, 4)
    for f, s in zip(fused, split):
        assert torch.equal(f, s)


def test_mamba2_decode_with_a_dt_limit_matches_transformers(build, ids):
    """transformers clamps dt by time_step_limit in its chunked form only, not in its one-token
    step: the accelerated model does the same (prefill clamped, decode steps not)."""
    model = build("mamba2", time_step_limit=(0.01, 0.05))
    prompt = ids[:1, :7]
    want = _step_logits(model, prompt, 3)
    ssmc.accelerate(model)
    for g, w in zip(_step_logits(model, prompt, 3), want):
        torch.testing.assert_close(g, w, **TOL)
    assert all(c["fused"] == 3 for n, c in call_counts(model).items() if n.endswith("mixer"))
