"""START: the saliency score against its definition written out per token, exactly k tokens
perturbed in training, identity in eval, determinism given a generator, the module prologue."""

import pytest
import torch
import torch.nn.functional as F

from ssmc.semantics.modules_ssm import SelectiveSSM
from ssmc.semantics.selective import selective_scan_ref
from ssmc.semantics.start import start_mask, start_perturb, start_saliency

b, d, N, L = 2, 4, 3, 12


def inputs(grouped=False):
    shape = (b, 2, N, L) if grouped else (b, N, L)
    return torch.randn(b, d, L), torch.randn(shape), torch.randn(shape)


@pytest.mark.parametrize("grouped", [False, True])
def test_saliency_definition(grouped):
    delta, B, C = inputs(grouped)
    bias = torch.randn(d)
    s = start_saliency(delta, B, C, delta_bias=bias, delta_softplus=True)
    Bg = B if grouped else B[:, None]
    Cg = C if grouped else C[:, None]
    for i in range(b):
        for t in range(L):
            dt = F.softplus(delta[i, :, t] + bias).mean()
            cb = torch.stack([(Cg[i, j, :, t] * Bg[i, j, :, t]).sum().abs()
                              for j in range(Bg.shape[1])]).mean()
            torch.testing.assert_close(s[i, t], dt * cb)


def test_mask_is_top_k_with_stable_ties():
    scores = torch.tensor([[0.1, 0.5, 0.5, 0.2, 0.9], [3.0, 3.0, 3.0, 3.0, 3.0]])
    m = start_mask(scores, 2)
    assert m.tolist() == [[False, True, False, False, True], [True, True, False, False, False]]
    assert start_mask(scores, 10).all()
    assert not start_mask(scores, 0).any()


def _changed_tokens(a, b):
    """(b, L) bool: tokens where any channel / state of a and b differ."""
    diff = (a != b)
    return diff.reshape(diff.shape[0], -1, diff.shape[-1]).any(dim=1)


@pytest.mark.parametrize("k", [0, 1, 3, L, L + 5])
@pytest.mark.parametrize("mode", ["noise", "drop"])
@pytest.mark.parametrize("grouped", [False, True])
def test_exactly_k_tokens_perturbed_in_training(k, mode, grouped):
    delta, B, C = inputs(grouped)
    mask = start_mask(start_saliency(delta, B, C), k)
    d2, B2, C2 = start_perturb(delta, B, C, k, mode=mode, sigma=0.5)
    for old, new in ((delta, d2), (B, B2), (C, C2)):
        changed = _changed_tokens(old, new)
        assert (changed.sum(1) == min(k, L)).all()
        assert torch.equal(changed, mask)  # the perturbed tokens are the most salient ones
        if mode == "drop":
            where = mask.reshape(b, *[1] * (new.dim() - 2), L).expand_as(new)
            assert (new[where] == 0).all()


def test_targets_choose_what_is_perturbed():
    delta, B, C = inputs()
    d2, B2, C2 = start_perturb(delta, B, C, 4, targets=("B",))
    assert torch.equal(d2, delta) and torch.equal(C2, C)
    assert _changed_tokens(B, B2).sum(1).tolist() == [4, 4]
    with pytest.raises(ValueError, match="targets"):
        start_perturb(delta, B, C, 4, targets=("A",))
    with pytest.raises(ValueError, match="mode"):
        start_perturb(delta, B, C, 4, mode="shuffle")


def test_identity_when_not_training():
    delta, B, C = inputs()
    out = start_perturb(delta, B, C, 5, training=False)
    assert all(o is i for o, i in zip(out, (delta, B, C)))


def test_deterministic_given_generator():
    delta, B, C = inputs()
    a = start_perturb(delta, B, C, 3, generator=torch.Generator().manual_seed(7))
    c = start_perturb(delta, B, C, 3, generator=torch.Generator().manual_seed(7))
    e = start_perturb(delta, B, C, 3, generator=torch.Generator().manual_seed(8))
    assert all(torch.equal(x, y) for x, y in zip(a, c))
    assert not torch.equal(a[1], e[1])


def test_noise_is_multiplicative_with_sigma():
    delta, B, C = inputs()
    _, B2, _ = start_perturb(delta, B, C, L, sigma=0.1, generator=torch.Generator().manual_seed(0))
    rel = (B2 / B - 1) / 0.1  # = eps ~ N(0, 1) everywhere (k = L)
    assert abs(rel.mean().item()) < 0.3 and abs(rel.std().item() - 1) < 0.3


def test_module_prologue():
    m = SelectiveSSM(d, N, start=dict(k=2, mode="drop"))
    x, delta = torch.randn(b, L, d), torch.randn(b, L, d)
    B, C = torch.randn(b, L, N), torch.randn(b, L, N)
    y_train = m.train()(x, delta, B, C)
    y_eval = m.eval()(x, delta, B, C)
    plain = SelectiveSSM(d, N)
    plain.load_state_dict(m.state_dict())
    torch.testing.assert_close(y_eval, plain(x, delta, B, C))  # eval: no prologue at all
    # train: the scan sees the perturbed inputs, nothing else changes.
    d2, B2, C2 = start_perturb(delta.transpose(1, 2), B.transpose(1, 2), C.transpose(1, 2), 2,
                               mode="drop", delta_bias=m.delta_bias, delta_softplus=True)
    want = selective_scan_ref(x.transpose(1, 2), d2, m.A(), B2, C2, D=m.D,
                              delta_bias=m.delta_bias, delta_softplus=True)
    torch.testing.assert_close(y_train, want.transpose(1, 2))
    assert not torch.allclose(y_train, y_eval)


def test_module_noise_uses_its_generator():
    m = SelectiveSSM(d, N, start=dict(k=3, sigma=0.3)).train()
    ins = (torch.randn(b, L, d), torch.randn(b, L, d), torch.randn(b, L, N), torch.randn(b, L, N))
    m.start_generator = torch.Generator().manual_seed(1)
    y1 = m(*ins)
    m.start_generator = torch.Generator().manual_seed(1)
    torch.testing.assert_close(m(*ins), y1)


@pytest.mark.parametrize("mode", ["noise", "drop"])
def test_draws_do_not_depend_on_the_layout(mode):
    """The compiled models pass views of channels-last tensors; the reference contiguous
    (b, d, L) ones: the same generator gives the same perturbed values."""
    delta, B, C = inputs(grouped=True)
    last = [delta.transpose(1, 2).contiguous().transpose(1, 2),
            B.permute(0, 3, 1, 2).contiguous().permute(0, 2, 3, 1),
            C.permute(0, 3, 1, 2).contiguous().permute(0, 2, 3, 1)]
    a = start_perturb(delta, B, C, 3, mode=mode, generator=torch.Generator().manual_seed(3))
    c = start_perturb(*last, 3, mode=mode, generator=torch.Generator().manual_seed(3))
    for x, y, v in zip(a, c, last):
        assert torch.equal(x, y)
        assert y.stride() == v.stride()  # the perturbed copy keeps the caller's layout


def test_gradients_flow_through_the_perturbation():
    delta, B, C = (t.requires_grad_() for t in inputs())
    g = torch.Generator().manual_seed(0)
    d2, B2, C2 = start_perturb(delta, B, C, 2, sigma=0.5, generator=g)
    (d2.sum() + B2.sum() + C2.sum()).backward()
    mask = start_mask(start_saliency(delta, B, C), 2)
    for v, v2 in ((delta, d2), (B, B2), (C, C2)):  # d v2 / d v = the factor: 1 off the tokens
        m = mask[:, None].expand_as(v)
        torch.testing.assert_close(v.grad[~m], torch.ones_like(v.grad[~m]))
        torch.testing.assert_close(v.grad[m], (v2 / v).detach()[m])
