"""Nested recursion: Recursion-in-Recursion over GRC trees (MODELS.md section 7).

Checked against the authors' code (JRC1995's BalancedTreeCell, RecurrentGRCX, EBT_GRC, HGRC).

Cell  GRC(l, r): [f1; f2; i; p] = W2 GELU(W1 [l; r] + b1) + b2   (W1: 2d -> 4d, W2: 4d -> 4d)
                 out = LayerNorm(sigmoid(f1) l + sigmoid(f2) r + sigmoid(i) p)
Inner models, each reducing a chunk of n <= W vectors (a prefix-valid mask) to one vector:
  "bbt"  balanced binary tree: per level pad an odd length with a masked zero, pair
         l = s[0::2], r = s[1::2], s <- GRC(l, r), a masked right child keeps l.
  "rnn"  GRC RNN: h = 0; h <- GRC(h, s_i) for every valid i (so one element gives GRC(0, s_0)).
  "beam" beam tree, beam size B: the state is up to B partial parses, each with a score (the
         sum of the log-probabilities of its merges).  A step scores every adjacent pair of
         every beam with a small MLP, log-softmax over the beam's pairs, keeps each beam's top
         pairs, then the best B (beam score + pair log-prob) over all beams, and merges the
         chosen pair with GRC.  After n - 1 steps the roots are pooled by softmax(scores).
Outer k-ary balanced tree (no state crosses chunks): while S > 1: if S >= k + k // 2 (= 1.5 k
for even k; the authors' integer form) split into ceil(S / k) chunks of k (the last one padded
with masked zeros) and reduce every chunk, else reduce the whole sequence once.

Variable lengths (`lengths`, (b,) ints >= 1): ssmc decides the chunking per row on that row's
own length, so a row's result does not depend on the rest of the batch.  (The authors decide
it on the padded batch length; the two agree when no row is padded.)

Two formulations:
  * `nested_ref`: level-synchronous and vectorised -- per outer level all chunks of all rows go
    through the inner model together; inside, all tree levels / beam steps run on whole tensors;
  * `nested_recursive`: one sequence at a time, recursion on Python lists of (d,) vectors.
Both compute in fp32 (fp64 stays fp64) and return the input dtype.  x: (b, L, d) -> (b, d).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

INNER = ("bbt", "rnn", "beam")
# Score of an impossible beam / pair.  Finite on purpose: -inf would give NaN in log_softmax of
# an all-masked row and NaN gradients through torch.where; exp(NEG - finite) is exactly 0.
NEG = -1e9


class GRCWeights(NamedTuple):
    """GRC parameters (nn.Linear's (out, in) convention)."""

    w1: torch.Tensor  # (4d, 2d)
    b1: torch.Tensor  # (4d,)
    w2: torch.Tensor  # (4d, 4d)
    b2: torch.Tensor  # (4d,)
    ln_weight: torch.Tensor  # (d,)
    ln_bias: torch.Tensor  # (d,)
    eps: float = 1e-5


class ScorerWeights(NamedTuple):
    """Pair-scoring MLP of the beam tree: [l; r] (2d) -> h -> GELU -> 1.

    No output bias: the scores only enter through log-softmax over pairs, which ignores a
    shift, so such a bias could never train (the authors' nn.Linear carries a dead one).
    """

    w1: torch.Tensor  # (h, 2d)
    b1: torch.Tensor  # (h,)
    w2: torch.Tensor  # (1, h)


def _cast(w, dtype):
    return type(w)(*(t.to(dtype) if isinstance(t, torch.Tensor) else t for t in w))


def _compute_weights(x, grc_w, scorer):
    """(compute dtype, GRC weights, scorer weights or None) in x's compute dtype: float64 for
    float64 inputs (gradchecks), float32 otherwise."""
    ct = torch.float64 if x.dtype == torch.float64 else torch.float32
    return ct, _cast(grc_w, ct), _cast(scorer, ct) if scorer is not None else None


def grc(l: torch.Tensor, r: torch.Tensor, w: GRCWeights) -> torch.Tensor:
    """Gated recursive cell.  l, r: (..., d) -> (..., d)."""
    h = F.gelu(F.linear(torch.cat([l, r], dim=-1), w.w1, w.b1))
    f1, f2, i, p = F.linear(h, w.w2, w.b2).chunk(4, dim=-1)
    mix = torch.sigmoid(f1) * l + torch.sigmoid(f2) * r + torch.sigmoid(i) * p
    return F.layer_norm(mix, mix.shape[-1:], w.ln_weight, w.ln_bias, w.eps)


def pair_score(l: torch.Tensor, r: torch.Tensor, s: ScorerWeights) -> torch.Tensor:
    """Merge logit of the adjacent pair (l, r).  (..., d), (..., d) -> (...)."""
    h = F.gelu(F.linear(torch.cat([l, r], dim=-1), s.w1, s.b1))
    return F.linear(h, s.w2).squeeze(-1)


# ----------------------------------------------------------------------------- vectorised inner
# Each takes x (n, m, d) and a prefix-valid mask (n, m) with at least one valid entry per row.


def bbt_reduce(x: torch.Tensor, mask: torch.Tensor, w: GRCWeights) -> torch.Tensor:
    """Balanced binary tree, all rows and all pairs of a level at once.  -> (n, d)."""
    while x.shape[1] > 1:
        if x.shape[1] % 2:
            x = torch.cat([x, x.new_zeros(x.shape[0], 1, x.shape[2])], dim=1)
            mask = torch.cat([mask, mask.new_zeros(mask.shape[0], 1)], dim=1)
        l, r = x[:, 0::2], x[:, 1::2]
        x = torch.where(mask[:, 1::2, None], grc(l, r, w), l)
        mask = mask[:, 0::2]
    return x[:, 0]


def rnn_reduce(x: torch.Tensor, mask: torch.Tensor, w: GRCWeights) -> torch.Tensor:
    """GRC RNN from a zero state; a masked step keeps the state.  -> (n, d)."""
    h = x.new_zeros(x.shape[0], x.shape[2])
    for i in range(x.shape[1]):
        h = torch.where(mask[:, i, None], grc(h, x[:, i], w), h)
    return h


def beam_reduce(x: torch.Tensor, mask: torch.Tensor, w: GRCWeights, scorer: ScorerWeights,
                beam: int) -> torch.Tensor:
    """Beam tree, all rows and beams at once.  -> (n, d).

    seq (n, B, m', d) holds every beam's current sequence; m' shrinks by one per step.  Beam 0
    starts as the input, the other slots start impossible (score NEG).  A row whose valid count
    has reached 1 is done: its beams and scores are carried unchanged.
    """
    n, m, d = x.shape
    count = mask.sum(1)  # valid nodes per row, decreases by one per merge
    seq = x[:, None].expand(n, beam, m, d)
    slot = torch.arange(beam, device=x.device)
    score = torch.where(slot == 0, 0.0, NEG).to(x.dtype).expand(n, beam)
    for _ in range(m - 1):
        L = seq.shape[2]
        logits = pair_score(seq[:, :, :-1], seq[:, :, 1:], scorer)  # (n, B, L-1)
        jj = torch.arange(L - 1, device=x.device)
        pair_ok = (jj[None, :] < (count - 1)[:, None])[:, None]  # (n, 1, L-1)
        logp = torch.log_softmax(logits.masked_fill(~pair_ok, NEG), dim=-1)
        # each beam's best pairs, then the best `beam` of all beams' candidates (as the authors)
        k1 = min(beam, L - 1)
        top_lp, top_j = logp.topk(k1, dim=-1)  # (n, B, k1)
        cand = (score[..., None] + top_lp).reshape(n, beam * k1)
        new_score, flat = cand.topk(beam, dim=-1)  # (n, B)
        parent = torch.div(flat, k1, rounding_mode="floor")
        j = top_j.reshape(n, beam * k1).gather(1, flat)  # chosen pair per new beam
        src = seq.gather(1, parent[..., None, None].expand(n, beam, L, d))
        def node(idx):  # src[:, :, idx] per (row, beam) -> (n, B, d)
            return src.gather(2, idx[..., None, None].expand(n, beam, 1, d)).squeeze(2)

        merged = grc(node(j), node(j + 1), w)
        # new position i holds src[i] left of the pair, the merge at j, src[i + 1] right of it
        ii = jj[None, None, :]
        take = ii + (ii > j[..., None]).long()
        new_seq = src.gather(2, take[..., None].expand(n, beam, L - 1, d))
        new_seq = torch.where((ii == j[..., None])[..., None], merged[:, :, None], new_seq)
        done = count <= 1
        seq = torch.where(done[:, None, None, None], seq[:, :, :-1], new_seq)
        score = torch.where(done[:, None], score, new_score)
        count = (count - 1).clamp(min=1)
    weights = torch.softmax(score, dim=-1)  # impossible beams get exactly 0
    return (weights[..., None] * seq[:, :, 0]).sum(1)


def _check(inner, chunk, beam, scorer):
    if inner not in INNER:
        raise ValueError(f"inner must be one of {INNER}, got {inner!r}")
    if not isinstance(chunk, int) or chunk < 2:
        raise ValueError(f"chunk must be an int >= 2 (k = 1 never shrinks the sequence), "
                         f"got {chunk!r}")
    if inner == "beam":
        if not isinstance(beam, int) or beam < 1:
            raise ValueError(f"beam must be a positive int, got {beam!r}")
        if scorer is None:
            raise ValueError("scorer: the beam inner model needs ScorerWeights")


def _lengths(x: torch.Tensor, lengths) -> list[int]:
    b, L, _ = x.shape
    if lengths is None:
        return [L] * b
    lens = [int(n) for n in torch.as_tensor(lengths).reshape(-1).tolist()]
    if len(lens) != b or any(n < 1 or n > L for n in lens):
        raise ValueError(f"lengths must hold {b} ints in [1, {L}], got {lens}")
    return lens


def _chunks_of(n: int, k: int) -> list[tuple[int, int]]:
    """(start, size) of the chunks the outer tree makes of a level of length n > 1."""
    if n >= k + k // 2:
        return [(s, min(k, n - s)) for s in range(0, n, k)]
    return [(0, n)]


def outer_tree(seq, lens: list, chunk: int, reduce) -> torch.Tensor:
    """The outer k-ary tree, level-synchronous: while a row is longer than 1, cut every row
    into its chunks (_chunks_of), reduce all chunks of all rows at once with
    reduce(chunks (n_chunks, W, d), valid (n_chunks, W)) -> (n_chunks, d), and make each row
    the sequence of its chunks' outputs.  seq (b, S, d), lens: the rows' lengths -> (b, d)."""
    b, _, d = seq.shape
    dev = seq.device
    while max(lens) > 1:
        rows, starts, sizes, new_lens = [], [], [], []
        for r, n in enumerate(lens):
            spans = _chunks_of(n, chunk) if n > 1 else []  # a finished row waits
            for s0, size in spans:
                rows.append(r)
                starts.append(s0)
                sizes.append(size)
            new_lens.append(max(len(spans), 1))
        W = max(sizes)
        S = seq.shape[1]
        rows_t = torch.tensor(rows, device=dev)
        sizes_t = torch.tensor(sizes, device=dev)
        offs = torch.arange(W, device=dev)
        valid = offs[None, :] < sizes_t[:, None]  # (n_chunks, W)
        pos = (torch.tensor(starts, device=dev)[:, None] + offs[None, :]).clamp(max=S - 1)
        chunks = torch.where(valid[..., None], seq[rows_t[:, None], pos], 0.0)
        out = reduce(chunks, valid)
        # next level: row r holds its chunks' outputs in order; a finished row keeps seq[r, 0]
        sources = torch.cat([out, seq[:, 0], seq.new_zeros(1, d)])
        zero_row = sources.shape[0] - 1
        table = [[zero_row] * max(new_lens) for _ in range(b)]
        fill = [0] * b
        for c, r in enumerate(rows):
            table[r][fill[r]] = c
            fill[r] += 1
        for r, n in enumerate(lens):
            if n == 1:
                table[r][0] = out.shape[0] + r
        seq = sources[torch.tensor(table, device=dev)]
        lens = new_lens
    return seq[:, 0]


def nested_ref(x, grc_w: GRCWeights, inner: str = "bbt", chunk: int = 30, lengths=None,
               scorer: ScorerWeights | None = None, beam: int = 7) -> torch.Tensor:
    """Nested recursion, level-synchronous.  x: (b, L, d); lengths: (b,) or None -> (b, d)."""
    _check(inner, chunk, beam, scorer)
    ct, w, sw = _compute_weights(x, grc_w, scorer)
    seq = x.to(ct)
    lens = _lengths(x, lengths)
    if inner == "bbt":
        reduce = lambda chunks, valid: bbt_reduce(chunks, valid, w)  # noqa: E731
    elif inner == "rnn":
        reduce = lambda chunks, valid: rnn_reduce(chunks, valid, w)  # noqa: E731
    else:
        reduce = lambda chunks, valid: beam_reduce(chunks, valid, w, sw, beam)  # noqa: E731
    return outer_tree(seq, lens, chunk, reduce).to(x.dtype)


# ----------------------------------------------------------------------- recursive cross-check


def _bbt_list(items: list, w: GRCWeights):
    if len(items) == 1:
        return items[0]
    parents = [grc(items[i], items[i + 1], w) if i + 1 < len(items) else items[i]
               for i in range(0, len(items), 2)]
    return _bbt_list(parents, w)


def _rnn_list(items: list, w: GRCWeights):
    h = torch.zeros_like(items[0])
    for it in items:
        h = grc(h, it, w)
    return h


def _beam_list(items: list, w: GRCWeights, scorer: ScorerWeights, beam: int):
    """Beam search on Python lists: candidates of all beams sorted by score, best `beam` kept."""
    beams = [(items[0].new_zeros(()), items)]
    while len(beams[0][1]) > 1:
        cands = []
        for bi, (sc, seq) in enumerate(beams):
            logits = torch.stack([pair_score(seq[j], seq[j + 1], scorer)
                                  for j in range(len(seq) - 1)])
            logp = torch.log_softmax(logits, dim=0)
            cands += [(sc + logp[j], bi, j) for j in range(len(seq) - 1)]
        cands.sort(key=lambda c: -float(c[0]))
        beams = [(sc, beams[bi][1][:j] + [grc(beams[bi][1][j], beams[bi][1][j + 1], w)]
                  + beams[bi][1][j + 2:]) for sc, bi, j in cands[:beam]]
    scores = torch.stack([sc for sc, _ in beams])
    roots = torch.stack([seq[0] for _, seq in beams])
    return (torch.softmax(scores, dim=0)[:, None] * roots).sum(0)


def _outer_list(items: list, inner_fn, k: int):
    if len(items) == 1:
        return items[0]
    if len(items) >= k + k // 2:
        return _outer_list([inner_fn(items[s:s + k]) for s in range(0, len(items), k)], inner_fn, k)
    return inner_fn(items)


def nested_recursive(x, grc_w: GRCWeights, inner: str = "bbt", chunk: int = 30, lengths=None,
                     scorer: ScorerWeights | None = None, beam: int = 7) -> torch.Tensor:
    """Nested recursion, one sequence at a time on lists (same arguments as `nested_ref`)."""
    _check(inner, chunk, beam, scorer)
    ct, w, sw = _compute_weights(x, grc_w, scorer)
    xf = x.to(ct)
    if inner == "bbt":
        inner_fn = lambda items: _bbt_list(items, w)  # noqa: E731
    elif inner == "rnn":
        inner_fn = lambda items: _rnn_list(items, w)  # noqa: E731
    else:
        inner_fn = lambda items: _beam_list(items, w, sw, beam)  # noqa: E731
    outs = [_outer_list(list(xf[r, :n].unbind(0)), inner_fn, chunk)
            for r, n in enumerate(_lengths(x, lengths))]
    return torch.stack(outs).to(x.dtype)
