"""Nested recursion oracle: level-synchronous vs recursive-on-lists, hand-expanded tree shapes,
an exhaustive beam search, variable lengths, dtypes, gradients and the module."""

import pytest
import torch

from ssmc.semantics.modules_misc import NestedRecursion
from ssmc.semantics.nested import (INNER, GRCWeights, ScorerWeights, grc, nested_recursive,
                                   nested_ref, pair_score)

D = 4


def weights(d=D, dtype=torch.float64):
    g = lambda *s: torch.randn(*s, dtype=dtype)  # noqa: E731
    w = GRCWeights(g(4 * d, 2 * d) / 2, g(4 * d), g(4 * d, 4 * d) / 3, g(4 * d),
                   1 + 0.1 * g(d), 0.1 * g(d))
    s = ScorerWeights(g(d, 2 * d), g(d), g(1, d))
    return w, s


def fp32(w):
    """A weights tuple with its tensors in fp32 (eps stays a float)."""
    return type(w)(*(p.float() if isinstance(p, torch.Tensor) else p for p in w))


LS = [1, 2, 7, 31, 100]
KS = [2, 3, 5, 30]  # 2 and 5 divide 100, 3 divides none of LS, 30 exercises "run once"


@pytest.mark.parametrize("k", KS, ids=[f"k{k}" for k in KS])
@pytest.mark.parametrize("L", LS, ids=[f"L{n}" for n in LS])
@pytest.mark.parametrize("inner", INNER)
def test_level_synchronous_matches_recursive(inner, L, k):
    w, s = weights()
    x = torch.randn(2, L, D, dtype=torch.float64)
    lengths = torch.tensor([L, max(1, (2 * L) // 3)])  # one full row, one padded row
    got = nested_ref(x, w, inner, k, lengths, s, beam=3)
    want = nested_recursive(x, w, inner, k, lengths, s, beam=3)
    assert got.shape == (2, D)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def test_default_beam_and_chunk():
    w, s = weights()
    x = torch.randn(1, 16, D, dtype=torch.float64)  # 16 < 1.5 * 30: one search, 7 beams
    torch.testing.assert_close(nested_ref(x, w, "beam", scorer=s),
                               nested_recursive(x, w, "beam", scorer=s), rtol=1e-10, atol=1e-10)


def test_fp32_matches_recursive(tol):
    w, s = map(fp32, weights())
    x = torch.randn(2, 11, D)
    for inner in INNER:
        torch.testing.assert_close(nested_ref(x, w, inner, 4, scorer=s, beam=3),
                                   nested_recursive(x, w, inner, 4, scorer=s, beam=3),
                                   **tol[torch.float32])


def test_grc_matches_formula():
    d = 3
    w, _ = weights(d)
    l, r = torch.randn(5, d, dtype=torch.float64), torch.randn(5, d, dtype=torch.float64)
    h = torch.cat([l, r], -1) @ w.w1.T + w.b1
    h = 0.5 * h * (1 + torch.erf(h / 2 ** 0.5))  # exact GELU
    z = h @ w.w2.T + w.b2
    f1, f2, i, p = z[:, :d], z[:, d:2 * d], z[:, 2 * d:3 * d], z[:, 3 * d:]
    sig = lambda t: 1 / (1 + torch.exp(-t))  # noqa: E731
    m = sig(f1) * l + sig(f2) * r + sig(i) * p
    mu, var = m.mean(-1, keepdim=True), m.var(-1, unbiased=False, keepdim=True)
    want = (m - mu) / torch.sqrt(var + 1e-5) * w.ln_weight + w.ln_bias
    torch.testing.assert_close(grc(l, r, w), want)


def test_tree_shapes_by_hand():
    """k = 2, L = 5: chunks [x0 x1][x2 x3][x4] -> [g01 g23 x4] -> [[g01 g23] [x4]] -> 2 left."""
    w, _ = weights()
    x = torch.randn(1, 5, D, dtype=torch.float64)
    c = lambda a, b: grc(a, b, w)  # noqa: E731
    v = x[0]
    bbt = c(c(c(v[0], v[1]), c(v[2], v[3])), v[4])
    torch.testing.assert_close(nested_ref(x, w, "bbt", 2)[0], bbt)
    # rnn from a zero state: a one-element chunk still gets GRC(0, x)
    z = torch.zeros(D, dtype=torch.float64)

    def rnn1(*items):
        return c(z, items[0]) if len(items) == 1 else c(rnn1(*items[:-1]), items[-1])

    g01, g23, g4 = rnn1(v[0], v[1]), rnn1(v[2], v[3]), rnn1(v[4])
    torch.testing.assert_close(nested_ref(x, w, "rnn", 2)[0], rnn1(rnn1(g01, g23), rnn1(g4)))
    # odd BBT level: the masked right child keeps l; 3 elements with k = 30 run once
    torch.testing.assert_close(nested_ref(x[:, :3], w, "bbt", 30)[0], c(c(v[0], v[1]), v[2]))


def _all_merge_orders(items, w, s):
    """Every merge sequence of the beam tree: yields (sum of log-probs, root)."""
    if len(items) == 1:
        yield torch.zeros((), dtype=items[0].dtype), items[0]
        return
    logp = torch.log_softmax(torch.stack([pair_score(items[j], items[j + 1], s)
                                          for j in range(len(items) - 1)]), 0)
    for j in range(len(items) - 1):
        merged = items[:j] + [grc(items[j], items[j + 1], w)] + items[j + 2:]
        for sc, root in _all_merge_orders(merged, w, s):
            yield logp[j] + sc, root


def test_beam_wide_enough_is_exhaustive():
    """L = 4 has 3! = 6 merge sequences: a beam of 6 keeps them all."""
    w, s = weights()
    x = torch.randn(2, 4, D, dtype=torch.float64)
    want = []
    for r in range(2):
        scores, roots = zip(*_all_merge_orders(list(x[r].unbind(0)), w, s))
        p = torch.softmax(torch.stack(scores), 0)
        want.append((p[:, None] * torch.stack(roots)).sum(0))
    torch.testing.assert_close(nested_ref(x, w, "beam", 30, scorer=s, beam=6), torch.stack(want))
    # and the beam is live: a greedy search gives another answer
    assert not torch.allclose(nested_ref(x, w, "beam", 30, scorer=s, beam=1), torch.stack(want))


@pytest.mark.parametrize("inner", INNER)
def test_lengths_make_rows_batch_independent(inner):
    w, s = weights()
    x = torch.randn(3, 23, D, dtype=torch.float64)
    lengths = torch.tensor([23, 9, 1])
    got = nested_ref(x, w, inner, 4, lengths, s, beam=3)
    for r, n in enumerate(lengths.tolist()):
        alone = nested_ref(x[r:r + 1, :n], w, inner, 4, None, s, beam=3)
        torch.testing.assert_close(got[r:r + 1], alone, rtol=1e-10, atol=1e-10)
    # padding content must not leak in
    x2 = x.clone()
    x2[1, 9:] = 1e3
    torch.testing.assert_close(nested_ref(x2, w, inner, 4, lengths, s, beam=3), got)


@pytest.mark.parametrize("inner", INNER)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_returns_input_dtype(inner, dtype, tol):
    w, s = map(fp32, weights())
    x = torch.randn(2, 6, D).to(dtype)
    y = nested_ref(x, w, inner, 3, None, s, beam=3)
    assert y.dtype == dtype
    torch.testing.assert_close(y.float(), nested_ref(x.float(), w, inner, 3, None, s, beam=3),
                               **tol[dtype])


@pytest.mark.parametrize("inner", INNER)
def test_gradcheck_float64(inner):
    d = 2
    w, s = weights(d)
    x = torch.randn(1, 5, d, dtype=torch.float64, requires_grad=True)
    w1 = w.w1.clone().requires_grad_()
    sb1 = s.b1.clone().requires_grad_()

    def f(x, w1, sb1):
        return nested_ref(x, w._replace(w1=w1), inner, 2, None, s._replace(b1=sb1), beam=2)

    # the beam's top-k is piecewise constant: fine away from ties, which random data avoids
    assert torch.autograd.gradcheck(f, (x, w1, sb1), fast_mode=True)


def test_argument_validation():
    w, s = weights()
    x = torch.randn(2, 5, D, dtype=torch.float64)
    with pytest.raises(ValueError, match="inner"):
        nested_ref(x, w, "lstm")
    with pytest.raises(ValueError, match="chunk"):
        nested_ref(x, w, "bbt", 1)
    with pytest.raises(ValueError, match="scorer"):
        nested_ref(x, w, "beam")
    with pytest.raises(ValueError, match="lengths"):
        nested_ref(x, w, "bbt", 3, torch.tensor([5, 0]))
    with pytest.raises(ValueError, match="lengths"):
        nested_recursive(x, w, "bbt", 3, torch.tensor([6, 2]))


@pytest.mark.parametrize("inner", INNER)
def test_module_backward_reaches_every_parameter(inner):
    m = NestedRecursion(D, chunk=3, inner=inner, beam=3)
    x = torch.randn(2, 7, D)
    y = m(x, torch.tensor([7, 5]))
    assert y.shape == (2, D)
    (y * torch.randn_like(y)).sum().backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_module_on_meta_counts_parameters():
    d = 8
    grc_params = (2 * d * 4 * d + 4 * d) + (4 * d * 4 * d + 4 * d) + 2 * d
    m = NestedRecursion(d, device="meta")
    assert all(p.is_meta for p in m.parameters())
    assert sum(p.numel() for p in m.parameters()) == grc_params
    with torch.device("meta"):
        mb = NestedRecursion(d, inner="beam")
    assert sum(p.numel() for p in mb.parameters()) == grc_params + (2 * d * d + d) + d


@pytest.mark.parametrize("kw,name", [
    (dict(d_model=0), "d_model"), (dict(d_model=4, chunk=1), "chunk"),
    (dict(d_model=4, inner="tree"), "inner"), (dict(d_model=4, inner="beam", beam=0), "beam"),
])
def test_module_validation(kw, name):
    with pytest.raises(ValueError, match=name):
        NestedRecursion(**kw)


def test_module_uses_its_parameters():
    """The module is the functional oracle on its own weights."""
    m = NestedRecursion(D, chunk=4, inner="bbt").double()
    x = torch.randn(2, 11, D, dtype=torch.float64)
    c = m.cell
    w = GRCWeights(c.w1.weight, c.w1.bias, c.w2.weight, c.w2.bias, c.norm.weight, c.norm.bias)
    torch.testing.assert_close(m(x), nested_recursive(x, w, "bbt", 4))
