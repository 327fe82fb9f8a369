"""START token-aware perturbation (MODELS.md section 10): a training-only prologue of the
selective scan.

ssmc's convention (the paper's exact saliency could not be checked):

* saliency of token t (per batch row) = mean_d(dt[:, d, t]) * |<C_t, B_t>|, where dt is the
  effective step (after delta_bias and softplus, as the scan will see it) and <C_t, B_t> is
  averaged over groups.  dt_t <C_t, B_t> is the diagonal of the selective scan's implicit
  attention matrix: how strongly token t writes into the state that it then reads.
* the k tokens of highest saliency in each row are selected (ties: lowest index first);
* their scan inputs are perturbed, all channels / states of those tokens alike:
  mode "noise": v <- v * (1 + sigma * eps), eps ~ N(0, 1) per element, drawn for the selected
  tokens only, as one (b, k, features...) tensor per target with the tokens in increasing
  position (so the draws do not depend on the tensors' layout);
  mode "drop":  v <- 0 (for delta this zeroes the raw input, so the step falls back to
  softplus(delta_bias));
  ``targets`` says which of "delta", "B", "C" are perturbed.
* identity (the very same tensors) when not training or k == 0.

Layouts are those of ``selective.selective_scan_ref``: delta (b, d, L); B, C (b, N, L) shared
or (b, g, N, L) grouped (views of channels-last tensors, as the compiled models pass, are as
good).  Noise draws use ``generator`` when given (on B's device), so the prologue is
deterministic given a torch.Generator.

Cost: the perturbation touches only the k selected tokens (a gather, the noise, an out-of-place
index_put), so besides the saliency's one read of delta, B, C it adds one copy of each target
and no full-size noise or select.  This is what MODELS.md's "fused into the kernel's load"
buys; applying it in front of the kernel keeps every scan backend and backward as it is.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["start_saliency", "start_tokens", "start_mask", "start_perturb", "START_MODES", "START_TARGETS"]

START_MODES = ("noise", "drop")
START_TARGETS = ("delta", "B", "C")


def _grouped(M: torch.Tensor) -> torch.Tensor:
    """(b, N, L) -> (b, 1, N, L); (b, g, N, L) unchanged."""
    return M[:, None] if M.dim() == 3 else M


def start_saliency(delta, B, C, delta_bias=None, delta_softplus=False) -> torch.Tensor:
    """Saliency per token (b, L) fp32 (see the module docstring).  No gradient flows."""
    with torch.no_grad():
        dt = delta.float()
        if delta_bias is not None:
            dt = dt + delta_bias.float()[:, None]
        if delta_softplus:
            dt = F.softplus(dt)
        Bg, Cg = _grouped(B), _grouped(C)
        cb = (Cg * Bg).sum(dim=2)  # (b, g, L), complex if B/C are
        return dt.mean(dim=1) * cb.abs().float().mean(dim=1)


def start_tokens(scores: torch.Tensor, k: int) -> torch.Tensor:
    """(b, L) scores -> (b, min(k, L)) int64: the top-k tokens of each row, in increasing
    position.  Ties are broken towards the earlier token (stable sort), so the choice is
    deterministic."""
    k = max(0, min(int(k), scores.shape[1]))
    top = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :k]
    return top.sort(dim=1).values


def start_mask(scores: torch.Tensor, k: int) -> torch.Tensor:
    """(b, L) scores -> (b, L) bool with exactly min(k, L) True per row: the top-k tokens
    (start_tokens as a mask)."""
    mask = torch.zeros(scores.shape, dtype=torch.bool, device=scores.device)
    return mask.scatter(1, start_tokens(scores, k), True)


def _token_major(v: torch.Tensor) -> torch.Tensor:
    """(b, ..., L) -> a (b, L, ...) view (no copy)."""
    return v.movedim(-1, 1)


def _perturb(v, tokens, mode, sigma, generator):
    """v (b, ..., L) with the tokens (b, k) of each row perturbed (out of place, differentiable:
    autograd sees a gather and an index_put)."""
    vt = _token_major(v)
    rows = torch.arange(vt.shape[0], device=v.device)[:, None].expand_as(tokens)
    sel = vt[rows, tokens]  # (b, k, ...)
    if mode == "drop":
        new = torch.zeros_like(sel)
    else:
        eps = torch.randn(sel.shape, generator=generator, device=v.device,
                          dtype=torch.float32).to(v.dtype)
        new = sel * (1 + sigma * eps)
    return vt.index_put((rows, tokens), new).movedim(1, -1)


def start_perturb(delta, B, C, k: int, *, mode: str = "noise", sigma: float = 0.1,
                  training: bool = True, generator=None, targets=START_TARGETS,
                  delta_bias=None, delta_softplus=False):
    """Apply START to the scan inputs; returns (delta, B, C) (same shapes and dtypes).

    delta_bias / delta_softplus only shape the saliency score (the effective step); the
    returned delta is still raw, for the scan to bias and softplus as usual.
    """
    if mode not in START_MODES:
        raise ValueError(f"mode must be one of {START_MODES}, got {mode!r}")
    bad = set(targets) - set(START_TARGETS)
    if bad:
        raise ValueError(f"targets must be a subset of {START_TARGETS}, got {sorted(bad)}")
    if not training or k <= 0:
        return delta, B, C
    tokens = start_tokens(start_saliency(delta, B, C, delta_bias, delta_softplus), k)
    out = {"delta": delta, "B": B, "C": C}
    for name in START_TARGETS:  # fixed order: the generator's draws do not depend on `targets`
        if name in targets:
            out[name] = _perturb(out[name], tokens, mode, sigma, generator)
    return out["delta"], out["B"], out["C"]
