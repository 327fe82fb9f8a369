"""START token-aware perturbation (MODELS.md section 10): a training-only prologue of the
selective scan.

ssmc's convention (the paper's exact saliency could not be checked):

* saliency of token t (per batch row) = mean_d(dt[:, d, t]) * |<C_t, B_t>|, where dt is the
  effective step (after delta_bias and softplus, as the scan will see it) and <C_t, B_t> is
  averaged over groups.  dt_t <C_t, B_t> is the diagonal of the selective scan's implicit
  attention matrix: how strongly token t writes into the state that it then reads.
* the k tokens of highest saliency in each row are selected (ties: lowest index first);
* their scan inputs are perturbed, all channels / states of those tokens alike:
  mode "noise": v <- v * (1 + sigma * eps), eps ~ N(0, 1) per element;
  mode "drop":  v <- 0 (for delta this zeroes the raw input, so the step falls back to
  softplus(delta_bias));
  ``targets`` says which of "delta", "B", "C" are perturbed.
* identity (the very same tensors) when not training or k == 0.

Layouts are those of ``selective.selective_scan_ref``: delta (b, d, L); B, C (b, N, L) shared
or (b, g, N, L) grouped.  Noise draws use ``generator`` when given (on B's device), so the
prologue is deterministic given a torch.Generator.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["start_saliency", "start_mask", "start_perturb", "START_MODES", "START_TARGETS"]

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


def start_mask(scores: torch.Tensor, k: int) -> torch.Tensor:
    """(b, L) scores -> (b, L) bool with exactly min(k, L) True per row: the top-k tokens.

    Ties are broken towards the earlier token (stable sort), so the mask is deterministic."""
    b, L = scores.shape
    k = max(0, min(int(k), L))
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :k]
    mask = torch.zeros(b, L, dtype=torch.bool, device=scores.device)
    return mask.scatter(1, order, True)


def _perturb(v, mask_L, mode, sigma, generator):
    """Perturb v (..., L) where mask_L (b, L) is True; mask_L broadcasts over v's middle dims."""
    m = mask_L.reshape(mask_L.shape[0], *([1] * (v.dim() - 2)), mask_L.shape[1])
    if mode == "drop":
        return v.masked_fill(m, 0)
    eps = torch.randn(v.shape, generator=generator, device=v.device,
                      dtype=torch.float32).to(v.dtype)
    return torch.where(m, v * (1 + sigma * eps), v)


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
    mask = start_mask(start_saliency(delta, B, C, delta_bias, delta_softplus), k)
    out = {"delta": delta, "B": B, "C": C}
    for name in START_TARGETS:  # fixed order: the generator's draws do not depend on `targets`
        if name in targets:
            out[name] = _perturb(out[name], mask, mode, sigma, generator)
    return out["delta"], out["B"], out["C"]
