"""Nested recursion (RIR / BBT-GRC, MODELS.md section 7) as a level-synchronous tree program.

The meaning is ``ssmc.semantics.nested.nested_ref`` (the oracle); this is how it runs fast.

**Plan.**  The tree shape depends only on the lengths, the chunk size k and the inner model,
never on the values, so it is worked out once (cached) as a list of *levels*: each level is a
list of (left, right) node ids whose GRC merges are independent, and whose results become new
node ids.  Every node ever made lives in one *store* (total_nodes, d): the b * L leaves first,
one zero node (the RNN's initial state), then each level's outputs in order, so a level writes
one contiguous slice and nothing is ever copied to "carry" an unpaired node: the next level
just names its id.  One level holds the merges of all chunks, all outer-tree levels that can
run together and all batch rows (rows with different lengths are planned separately and
merged level by level: a row's level t only depends on its own earlier levels).  For L 4096,
k 32: 12 levels (5 + 5 + 2), one pair of GEMMs each.

**A level.**  lr = store[pairs] (one gather, (P, 2d): [l; r] is the cell's input as it is),
h = GELU(lr W1^T + b1), g = h W2^T + b2 (two GEMMs for every pair of the level), then the
fused epilogue out = LayerNorm(sigmoid(f1) l + sigmoid(f2) r + sigmoid(i) p) straight into the
store.  Epilogue backends: "tvm" (CPU fp32: ssmc.codegen.tvm.grc, GELU in place and the
epilogue in one pass each), "triton" (CUDA: ssmc.codegen.triton.grc), "torch" (any device and
dtype; float64 runs here so gradchecks of the oracle stay meaningful).

**Beam.**  The beam tree's choices depend on the values, so it is not a static plan: it runs
the oracle's algorithm (all chunks and beams batched per step) with three changes: beams hold
node ids into a store instead of copies of the vectors (a step rearranges integers); the pair
scorer's first layer is split, W1 [l; r] = W1_l l + W1_r r, so every node's two projections are
computed once when the node is made (a step then costs a gather and a GELU instead of a GEMM
over every adjacent pair); merges use the fused GRC above.  With gradients the same program
runs under autograd (the stores written by assignment, merges by the oracle's GRC).

Gradients (bbt, rnn): the ``ssmc::nested_tree`` op (ssmc.runtime.nested_op: register_fake,
register_autograd) -- the fused forward keeps the node store and every merge's pre-GELU and g
in one (2, merges, 4d) tensor; the backward (`tree_backward`, the op ``ssmc::nested_tree_bwd``)
walks the levels in reverse (four GEMMs per level, the elementwise parts by autograd on the
saved activations).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ssmc.runtime import gemm
from ssmc.semantics.nested import (
    NEG,
    GRCWeights,
    ScorerWeights,
    _check,
    _chunks_of,
    _compute_weights,
    _lengths,
    grc,
    outer_tree,
)

EPILOGUES = ("auto", "tvm", "triton", "torch")

# ----------------------------------------------------------------------------- the plan


@dataclass(frozen=True)
class _RowPlan:
    levels: tuple  # per level an (P, 2) int64 array of local ids
    starts: np.ndarray  # local id of each level's first output (n + merges before it)
    root: int


@functools.lru_cache(maxsize=256)
def _row_plan(n: int, k: int, inner: str) -> _RowPlan:
    """The merges of one sequence of length n.  Local ids: leaves 0..n-1, the zero node -1,
    merge outputs n, n+1, ... in level order."""
    levels: list = []
    nxt = n
    seq = list(range(n))
    while len(seq) > 1:
        cur = [seq[s:s + size] for s, size in _chunks_of(len(seq), k)]
        if inner == "bbt":
            while any(len(c) > 1 for c in cur):
                pairs, new = [], []
                for c in cur:
                    nc = []
                    for i in range(0, len(c) - 1, 2):
                        pairs.append((c[i], c[i + 1]))
                        nc.append(nxt)
                        nxt += 1
                    if len(c) % 2:
                        nc.append(c[-1])  # a masked right child keeps l
                    new.append(nc)
                levels.append(pairs)
                cur = new
            seq = [c[0] for c in cur]
        else:  # "rnn": h <- GRC(h, s_i) from a zero state, every chunk in parallel
            hs = [-1] * len(cur)
            for i in range(max(len(c) for c in cur)):
                pairs = []
                for ci, c in enumerate(cur):
                    if i < len(c):
                        pairs.append((hs[ci], c[i]))
                        hs[ci] = nxt
                        nxt += 1
                levels.append(pairs)
            seq = hs
    arrays = tuple(np.asarray(p, dtype=np.int64).reshape(-1, 2) for p in levels)
    starts = np.cumsum([n] + [len(p) for p in levels])[:-1] if levels else np.zeros(0, np.int64)
    return _RowPlan(arrays, np.asarray(starts, dtype=np.int64), seq[0])


@dataclass(frozen=True)
class TreePlan:
    """Levels over a global node store: leaves are rows r * L + j, `zero` the zero node."""

    b: int
    L: int
    zero: int
    total: int  # nodes in the store
    levels: tuple  # per level (pairs (P, 2) int64 tensor, first output id)
    roots: torch.Tensor  # (b,) int64
    max_pairs: int

    @property
    def merges(self) -> int:
        return self.total - self.zero - 1


@functools.lru_cache(maxsize=64)
def build_plan(lens: tuple, L: int, k: int, inner: str) -> TreePlan:
    """The level-synchronous plan for rows of lengths `lens` (padded length L)."""
    if inner not in ("bbt", "rnn"):
        raise ValueError(f"inner must be 'bbt' or 'rnn' for a static plan, got {inner!r}")
    b = len(lens)
    groups: dict = {}
    for r, n in enumerate(lens):
        groups.setdefault(int(n), []).append(r)
    plans = {n: _row_plan(n, k, inner) for n in groups}
    depth = max((len(p.levels) for p in plans.values()), default=0)
    zero = b * L
    nxt = zero + 1
    base: dict = {}  # (n, t) -> global id of that group's first output at level t
    firsts = []
    for t in range(depth):
        firsts.append(nxt)
        for n, rows in groups.items():
            lv = plans[n].levels
            if t < len(lv):
                base[(n, t)] = nxt
                nxt += len(rows) * len(lv[t])

    def to_global(local: np.ndarray, n: int, rows: list) -> np.ndarray:
        """local ids (...) of group n -> global ids (m, ...) for its m rows."""
        p = plans[n]
        rows_a = np.asarray(rows, dtype=np.int64).reshape((-1,) + (1,) * local.ndim)
        idx = np.arange(len(rows), dtype=np.int64).reshape(rows_a.shape)
        out = np.where(local < 0, zero, rows_a * L + local)
        new = local >= n
        if new.any() and len(p.starts):
            t = np.searchsorted(p.starts, local, side="right") - 1
            t = np.clip(t, 0, len(p.starts) - 1)
            sizes = np.asarray([len(a) for a in p.levels], dtype=np.int64)
            bases = np.asarray([base[(n, i)] for i in range(len(p.levels))], dtype=np.int64)
            glob = bases[t] + idx * sizes[t] + (local - p.starts[t])
            out = np.where(new, glob, out)
        return out

    levels = []
    for t in range(depth):
        parts = [to_global(plans[n].levels[t], n, rows).reshape(-1, 2)
                 for n, rows in groups.items() if t < len(plans[n].levels)]
        pairs = np.concatenate(parts)
        levels.append((torch.from_numpy(np.ascontiguousarray(pairs)), firsts[t]))
    roots = np.zeros(b, dtype=np.int64)
    for n, rows in groups.items():
        roots[rows] = to_global(np.asarray(plans[n].root, dtype=np.int64), n, rows).reshape(-1)
    max_pairs = max((lv[0].shape[0] for lv in levels), default=0)
    return TreePlan(b, L, zero, nxt, tuple(levels), torch.from_numpy(roots), max_pairs)


def plan_stats(L: int, k: int, inner: str = "bbt") -> dict:
    """Levels, merges and the pairs of the widest level for one row of length L (the cost
    model's view of a plan)."""
    p = _row_plan(int(L), int(k), inner)
    sizes = [len(a) for a in p.levels]
    return {"levels": len(sizes), "merges": int(sum(sizes)), "max_pairs": max(sizes, default=0),
            "pairs": sizes}


# ----------------------------------------------------------------------------- the GRC cell


def _pick_epilogue(epilogue: str, device: torch.device, dtype: torch.dtype) -> str:
    if epilogue not in EPILOGUES:
        raise ValueError(f"epilogue must be one of {EPILOGUES}, got {epilogue!r}")
    if epilogue != "auto":
        if epilogue == "tvm" and (device.type != "cpu" or dtype != torch.float32):
            raise ValueError(f"epilogue: 'tvm' runs fp32 CPU tensors, got {dtype} on {device}")
        if epilogue == "triton" and dtype != torch.float32:
            raise ValueError(f"epilogue: 'triton' runs fp32 tensors, got {dtype}")
        return epilogue
    if dtype != torch.float32:
        return "torch"
    if device.type == "cpu":
        return "tvm"
    return "triton" if device.type == "cuda" else "torch"


def _gelu_torch_(h):
    h.copy_(F.gelu(h))
    return h


def _epilogue_torch(g, lr, w: GRCWeights, out):
    d = out.shape[-1]
    f1, f2, i, p = g.chunk(4, dim=-1)
    mix = torch.sigmoid(f1) * lr[:, :d] + torch.sigmoid(f2) * lr[:, d:] + torch.sigmoid(i) * p
    out.copy_(F.layer_norm(mix, (d,), w.ln_weight, w.ln_bias, w.eps))
    return out


def _elementwise(kind: str):
    """(gelu_(h), epilogue(g, lr, w, out)) of a backend."""
    if kind == "tvm":
        from ssmc.codegen.tvm.grc import gelu_, grc_epilogue

        return gelu_, lambda g, lr, w, out: grc_epilogue(g, lr, w.ln_weight, w.ln_bias, w.eps,
                                                         out)
    if kind == "triton":
        from ssmc.codegen.triton.grc import gelu_, grc_epilogue

        return gelu_, lambda g, lr, w, out: grc_epilogue(g, lr, w.ln_weight, w.ln_bias, w.eps,
                                                         out)
    return _gelu_torch_, _epilogue_torch


class _Cell:
    """GRC on rows [l; r] (P, 2d) with work buffers reused across levels."""

    def __init__(self, w: GRCWeights, kind: str, rows: int, like: torch.Tensor):
        self.w = w
        self.w1t, self.w2t = w.w1.t(), w.w2.t()
        self.gelu_, self.epilogue = _elementwise(kind)
        self.fused_gemms = kind == "tvm"  # the CPU fp32 path
        d4 = w.w1.shape[0]
        self.h = like.new_empty(max(rows, 1), d4)
        self.g = like.new_empty(max(rows, 1), d4)

    def __call__(self, lr: torch.Tensor, out: torch.Tensor, saved: torch.Tensor | None = None):
        """out <- GRC(lr); with `saved` ((2, P, 4d), a slice of the plan's activation store),
        also keep this call's pre-GELU (saved[0]) and g (saved[1]) for a backward."""
        P = lr.shape[0]
        if P > self.h.shape[0]:
            self.h = self.h.new_empty(P, self.h.shape[1])
            self.g = self.g.new_empty(P, self.g.shape[1])
        if saved is None and self.fused_gemms:
            # oneDNN: GELU as the first GEMM's post-op (both GEMMs 1.2x faster than MKL here)
            h = gemm.linear_gelu(lr, self.w.w1, self.w.b1)
            g = gemm.linear(h, self.w.w2, self.w.b2)
        elif saved is None:
            h = torch.addmm(self.w.b1, lr, self.w1t, out=self.h[:P])
            self.gelu_(h)
            g = torch.addmm(self.w.b2, h, self.w2t, out=self.g[:P])
        else:
            pre = torch.addmm(self.w.b1, lr, self.w1t, out=saved[0])
            h = self.h[:P]
            h.copy_(pre)
            self.gelu_(h)
            g = torch.addmm(self.w.b2, h, self.w2t, out=saved[1])
        return self.epilogue(g, lr, self.w, out)


def grc_rows(l: torch.Tensor, r: torch.Tensor, w: GRCWeights, epilogue: str = "auto"):
    """GRC(l, r) for (..., d) tensors through the fused cell (the oracle is semantics.grc)."""
    d = l.shape[-1]
    lr = torch.cat([l, r], dim=-1).reshape(-1, 2 * d).contiguous()
    kind = _pick_epilogue(epilogue, lr.device, lr.dtype)
    out = lr.new_empty(lr.shape[0], d)
    _Cell(w, kind, lr.shape[0], lr)(lr, out)
    return out.reshape(l.shape)


# ----------------------------------------------------------------------------- the tree


def run_plan(x2: torch.Tensor, plan: TreePlan, w: GRCWeights, kind: str,
             acts: torch.Tensor | None = None):
    """Execute a plan on leaves x2 (b * L, d) -> roots (b, d) [and the node store, when `acts`
    ((2, merges, 4d)) is given to receive every merge's pre-GELU and g, in node order]."""
    d = x2.shape[1]
    store = x2.new_empty(plan.total, d)
    store[:plan.zero] = x2
    store[plan.zero] = 0
    if plan.levels:
        cell = _Cell(w, kind, plan.max_pairs, x2)
        lr_buf = x2.new_empty(plan.max_pairs, 2 * d)
        dev = x2.device
        for pairs, first in plan.levels:
            P = pairs.shape[0]
            lr = lr_buf[:P]
            torch.index_select(store, 0, pairs.to(dev, non_blocking=True).view(-1),
                               out=lr.view(2 * P, d))
            m0 = first - plan.zero - 1  # merge outputs are numbered from zero + 1
            cell(lr, store[first:first + P], None if acts is None else acts[:, m0:m0 + P])
    roots = store[plan.roots.to(x2.device)]
    return (roots, store) if acts is not None else roots


def _epilogue_backward(gout, g, lr, ln_w, ln_b, eps):
    """Gradients of the GRC epilogue out = LayerNorm(sigmoid(f1) l + sigmoid(f2) r +
    sigmoid(i) p) -> (d g, d [l; r], d ln_w, d ln_b), by aten's own backward formulas (this
    runs inside a custom op, below autograd, so there is no graph to differentiate)."""
    d = ln_w.shape[0]
    f1, f2, i, p = (torch.sigmoid(t) if k < 3 else t for k, t in enumerate(g.chunk(4, dim=-1)))
    left, right = lr[:, :d], lr[:, d:]
    mix = f1 * left + f2 * right + i * p
    _, mean, rstd = torch.ops.aten.native_layer_norm(mix, [d], ln_w, ln_b, eps)
    d_mix, d_lw, d_lb = torch.ops.aten.native_layer_norm_backward(
        gout, mix, [d], mean, rstd, ln_w, ln_b, [True, True, True])
    d_g = torch.cat([d_mix * left * f1 * (1 - f1), d_mix * right * f2 * (1 - f2),
                     d_mix * p * i * (1 - i), d_mix * i], dim=-1)
    return d_g, torch.cat([d_mix * f1, d_mix * f2], dim=-1), d_lw, d_lb


def tree_backward(grad_roots, store, acts, w1, w2, ln_w, ln_b, plan: TreePlan, eps: float):
    """The plan's backward: the levels in reverse, the elementwise parts by torch autograd on
    the saved activations (acts: run_plan's), the four GEMMs of the two linear layers by hand,
    the [l; r] gradient scattered back into the store's.  -> (d x2, dw1, db1, dw2, db2,
    dln_w, dln_b)."""
    d = store.shape[1]
    dev = store.device
    gstore = torch.zeros_like(store)
    gstore.index_add_(0, plan.roots.to(dev), grad_roots)
    gw1 = gw2 = gb1 = gb2 = glw = glb = None  # the first level's terms start each sum
    for pairs, first in reversed(plan.levels):
        P = pairs.shape[0]
        m0 = first - plan.zero - 1
        pre, g = acts[0, m0:m0 + P], acts[1, m0:m0 + P]
        idx = pairs.to(dev).view(-1)
        lr = store[idx].view(P, 2 * d)
        gout = gstore[first:first + P]
        d_g, d_lr, d_lw, d_lb = _epilogue_backward(gout, g, lr, ln_w, ln_b, eps)
        h = F.gelu(pre)
        d_pre = torch.ops.aten.gelu_backward(d_g @ w2, pre)
        if gw1 is None:
            gw2, gb2, gw1, gb1 = d_g.t() @ h, d_g.sum(0), d_pre.t() @ lr, d_pre.sum(0)
            glw, glb = d_lw, d_lb
        else:
            gw2.addmm_(d_g.t(), h)
            gb2 += d_g.sum(0)
            gw1.addmm_(d_pre.t(), lr)
            gb1 += d_pre.sum(0)
            glw += d_lw
            glb += d_lb
        d_lr = d_lr.addmm_(d_pre, w1)
        gstore.index_add_(0, idx, d_lr.view(2 * P, d))
    if gw1 is None:  # no merge at all (every row one leaf)
        gw1, gw2, gb1, gb2 = (torch.zeros_like(t) for t in (w1, w2, w1[:, 0], w2[:, 0]))
        glw, glb = torch.zeros_like(ln_w), torch.zeros_like(ln_b)
    return gstore[:plan.zero], gw1, gb1, gw2, gb2, glw, glb


def _wants_grad(*ts) -> bool:
    return torch.is_grad_enabled() and any(isinstance(t, torch.Tensor) and t.requires_grad
                                           for t in ts)


def _weights(x, grc_w, scorer):
    ct, w, sw = _compute_weights(x, grc_w, scorer)
    return ct, GRCWeights(*(t.contiguous() if isinstance(t, torch.Tensor) else t for t in w)), sw


def _check_x(x, grc_w):
    if not isinstance(x, torch.Tensor) or x.dim() != 3:
        got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"x must be a (b, L, d) tensor, got {got}")
    d = grc_w.ln_weight.shape[0]
    if x.shape[2] != d or tuple(grc_w.w1.shape) != (4 * d, 2 * d) \
            or tuple(grc_w.w2.shape) != (4 * d, 4 * d):
        raise ValueError(f"x: last dim {x.shape[2]} does not match the GRC weights "
                         f"(w1 {tuple(grc_w.w1.shape)}, w2 {tuple(grc_w.w2.shape)}, "
                         f"d = {d})")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"x must have b >= 1 and L >= 1, got {tuple(x.shape)}")


def nested_tree(x, grc_w: GRCWeights, inner: str = "bbt", chunk: int = 30, lengths=None,
                scorer: ScorerWeights | None = None, beam: int = 7,
                epilogue: str = "auto") -> torch.Tensor:
    """Nested recursion, level-synchronous (same arguments and result as
    ``semantics.nested.nested_ref``).  x: (b, L, d); lengths: (b,) or None -> (b, d).
    epilogue: where the GRC's elementwise parts run: auto | tvm | triton | torch."""
    _check(inner, chunk, beam, scorer)
    _check_x(x, grc_w)
    lens = _lengths(x, lengths)
    ct, w, sw = _weights(x, grc_w, scorer)
    kind = _pick_epilogue(epilogue, x.device, ct)
    b, L, d = x.shape
    xf = x.to(ct)
    if inner == "beam":
        out = _beam_outer(xf, lens, chunk, w, sw, beam, kind)
    else:
        x2 = xf.reshape(b * L, d).contiguous()
        keep = _wants_grad(x2, *w[:6])
        if keep or torch.compiler.is_compiling():
            from ssmc.runtime import nested_op  # noqa: F401  (defines the op)

            # the ssmc::nested_tree op: differentiable (tree_backward) and traceable
            out = torch.ops.ssmc.nested_tree(x2, *w[:6], float(w.eps), [int(n) for n in lens],
                                             L, chunk, inner, kind, keep)[0]
        else:
            out = run_plan(x2, build_plan(tuple(lens), L, chunk, inner), w, kind)
    return out.to(x.dtype)


# ----------------------------------------------------------------------------- the beam tree


def _beam_reduce(x, mask, w: GRCWeights, s: ScorerWeights, beam: int, cell_fn):
    """The oracle's beam_reduce (semantics.nested) on a node store: beams hold node *ids*
    (n, B, m') into V (nodes, d), with every node's scorer projections PL = W1_l v + b1 and
    PR = W1_r v computed once, when the node is made.  A step gathers the projections of the
    adjacent pairs (the scores), merges the chosen pair of every beam (one batched GRC, its
    projections by two small GEMMs) and rearranges integer ids only."""
    n, m, d = x.shape
    count = mask.sum(1)
    w1l, w1r = s.w1[:, :d], s.w1[:, d:]
    hid = s.w1.shape[0]
    total = n * m + n * beam * max(m - 1, 0)
    V = x.new_empty(total, d)
    PL = x.new_empty(total, hid)
    PR = x.new_empty(total, hid)
    # assignments, not out= GEMMs into the stores, so that autograd can follow them (the
    # stores are then written through CopySlices; a gather from them saves only indices)
    leaves = x.reshape(n * m, d)
    V[:n * m] = leaves
    PL[:n * m] = torch.addmm(s.b1, leaves, w1l.t())
    PR[:n * m] = leaves @ w1r.t()
    dev = x.device
    ids = (torch.arange(n, device=dev)[:, None] * m + torch.arange(m, device=dev))[:, None]
    ids = ids.expand(n, beam, m)
    slot = torch.arange(beam, device=dev)
    score = torch.where(slot == 0, 0.0, NEG).to(x.dtype).expand(n, beam)
    w2 = s.w2[0]
    nxt = n * m
    for _ in range(m - 1):
        L = ids.shape[2]
        logits = F.gelu(PL[ids[:, :, :-1]] + PR[ids[:, :, 1:]]) @ w2  # (n, B, L-1)
        jj = torch.arange(L - 1, device=dev)
        pair_ok = (jj[None, :] < (count - 1)[:, None])[:, None]
        logp = torch.log_softmax(logits.masked_fill(~pair_ok, NEG), dim=-1)
        k1 = min(beam, L - 1)
        top_lp, top_j = logp.topk(k1, dim=-1)
        cand = (score[..., None] + top_lp).reshape(n, beam * k1)
        new_score, flat = cand.topk(beam, dim=-1)
        parent = torch.div(flat, k1, rounding_mode="floor")
        j = top_j.reshape(n, beam * k1).gather(1, flat)  # (n, B)
        src = ids.gather(1, parent[..., None].expand(n, beam, L))  # the parents' id rows
        left = src.gather(2, j[..., None])[..., 0]
        right = src.gather(2, (j + 1)[..., None])[..., 0]
        made = slice(nxt, nxt + n * beam)
        new = cell_fn(V[left.reshape(-1)], V[right.reshape(-1)])
        V[made] = new
        PL[made] = torch.addmm(s.b1, new, w1l.t())
        PR[made] = new @ w1r.t()
        new_id = torch.arange(nxt, nxt + n * beam, device=dev).reshape(n, beam)
        nxt += n * beam
        ii = jj[None, None, :]
        take = ii + (ii > j[..., None]).long()
        new_ids = torch.where(ii == j[..., None], new_id[..., None], src.gather(2, take))
        done = count <= 1
        ids = torch.where(done[:, None, None], ids[:, :, :-1], new_ids)
        score = torch.where(done[:, None], score, new_score)
        count = (count - 1).clamp(min=1)
    weights = torch.softmax(score, dim=-1)
    return (weights[..., None] * V[ids[:, :, 0]]).sum(1)


def _beam_outer(seq, lens, chunk, w, sw, beam, kind):
    """The oracle's outer k-ary tree (semantics.nested.outer_tree) around the batched beam
    reduce."""
    d = seq.shape[2]

    def cell_fn(l, r):  # (P, d), (P, d) -> (P, d)
        if _wants_grad(l, *w[:6]):  # the fused cell writes into buffers: autograd's GRC
            return grc(l, r, w)
        lr = torch.cat([l, r], dim=-1)
        return _Cell(w, kind, lr.shape[0], lr)(lr, lr.new_empty(lr.shape[0], d))

    return outer_tree(seq, lens, chunk,
                      lambda chunks, valid: _beam_reduce(chunks, valid, w, sw, beam, cell_fn))
