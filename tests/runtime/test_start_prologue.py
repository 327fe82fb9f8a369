"""START in training mode runs as a prologue in front of the compiled Mamba-1 kernel
(ssmc.runtime.executors.start_prologue) and draws exactly what the reference module draws."""

from __future__ import annotations

import torch

import ssmc
from ssmc.paths import zoo_dir
from ssmc.semantics.model import build_reference

FP32 = dict(rtol=6e-4, atol=2e-3)


def test_start_prologue_matches_reference_and_runs_the_kernel():
    torch.manual_seed(0)
    model = ssmc.compile(zoo_dir() / "mamba_start.yaml", "cpu", seqlen=64).train()
    ref = build_reference(model.source_graph).train()
    ref.load_state_dict(model.state_dict())
    calls = []
    for _, node, _ in model.graph.walk():
        if "run" in node.meta:
            executor, fn, config = node.meta["run"]

            def counted(*a, _fn=fn, **k):
                calls.append(1)
                return _fn(*a, **k)
            node.meta["run"] = (executor, counted, config)
    tokens = torch.randint(0, 256, (2, 40))
    with torch.no_grad():
        torch.manual_seed(5)
        got = model(tokens)
        torch.manual_seed(5)
        want = ref(tokens)
        assert len(calls) == 2  # one kernel call per layer, in training mode
        torch.testing.assert_close(got, want, **FP32)
        torch.manual_seed(6)
        assert (model(tokens) - got).abs().max() > 1e-4  # the perturbation is really there
        model.eval()
        ref.eval()
        torch.testing.assert_close(model(tokens), ref(tokens), **FP32)  # identity at eval
    model.train()
    ref.train()
    torch.manual_seed(5)
    model(tokens).square().mean().backward()
    torch.manual_seed(5)
    ref(tokens).square().mean().backward()
    grads = dict(ref.named_parameters())
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, grads[name].grad, rtol=1e-3, atol=1e-5, msg=name)
