"""Small randomly initialised transformers Mamba / Mamba-2 models (no downloads)."""

import pytest
import torch

transformers = pytest.importorskip(
    "transformers", reason="transformers is not installed (pip install 'ssmc[hf]')")

from transformers.utils import logging as _hf_logging  # noqa: E402

_hf_logging.set_verbosity_error()  # "falling back to the reference implementation" notices

VOCAB = 128


def mamba_config(**kw):
    return transformers.MambaConfig(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2,
                                    state_size=16, **kw)


def mamba2_config(**kw):
    args = dict(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, state_size=16,
                num_heads=8, head_dim=16, n_groups=2, chunk_size=16)
    args.update(kw)
    return transformers.Mamba2Config(**args)


def _build(cls, cfg, seed=0):
    torch.manual_seed(seed)
    model = cls(cfg).eval()
    with torch.no_grad():  # random D / dt / norm weights so that every parameter matters
        for name, p in model.named_parameters():
            if name.endswith((".D", "norm.weight", "norm_f.weight")):
                p.copy_(1.0 + 0.3 * torch.randn_like(p))
    return model


@pytest.fixture
def mamba():
    return _build(transformers.MambaForCausalLM, mamba_config())


@pytest.fixture
def mamba2():
    return _build(transformers.Mamba2ForCausalLM, mamba2_config())


@pytest.fixture(params=["mamba", "mamba2"])
def model(request):
    cls = transformers.MambaForCausalLM if request.param == "mamba" else transformers.Mamba2ForCausalLM
    cfg = mamba_config() if request.param == "mamba" else mamba2_config()
    return _build(cls, cfg)


@pytest.fixture
def build():
    """build('mamba' | 'mamba2', **config overrides) -> a random eval-mode LM."""
    def make(kind, seed=0, **kw):
        if kind == "mamba":
            return _build(transformers.MambaForCausalLM, mamba_config(**kw), seed)
        return _build(transformers.Mamba2ForCausalLM, mamba2_config(**kw), seed)
    return make


@pytest.fixture
def ids():
    return torch.randint(0, VOCAB, (2, 40))
