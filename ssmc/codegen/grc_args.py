"""Argument checks of the GRC cell's elementwise kernels (RIR, MODELS.md section 7), shared by
their backends (ssmc.codegen.tvm.grc on the CPU, ssmc.codegen.triton.grc on a GPU): both take
fp32 row-contiguous (P, cols) tensors, so a bad argument reads the same whichever runs it."""

from __future__ import annotations

import torch


def check_rows(name: str, t, cols: int, cpu: bool = False) -> None:
    """t must be a row-contiguous fp32 (P, cols) tensor, on the CPU when `cpu` (the TVM
    kernels; the Triton ones check their devices together)."""
    where = " CPU" if cpu else ""
    if not isinstance(t, torch.Tensor) or t.dtype != torch.float32 or t.dim() != 2 \
            or t.shape[1] != cols or t.stride() != (cols, 1) \
            or (cpu and t.device.type != "cpu"):
        got = (f"shape {tuple(t.shape)} dtype {t.dtype} strides {t.stride()} device {t.device}"
               if isinstance(t, torch.Tensor) else type(t).__name__)
        raise ValueError(f"{name} must be a row-contiguous fp32{where} tensor (P, {cols}); "
                         f"got {got}")


def width(t) -> int:
    """The row width of a 2-D tensor, -1 otherwise (check_rows then names the argument)."""
    return t.shape[-1] if isinstance(t, torch.Tensor) and t.dim() == 2 else -1


def check_epilogue(g, lr, out, cpu: bool = False) -> int:
    """[f1; f2; i; p] = g (P, 4d), [l; r] = lr (P, 2d), out (P, d) -> d."""
    d = width(out)
    check_rows("out", out, d, cpu)
    check_rows("g", g, 4 * d, cpu)
    check_rows("lr", lr, 2 * d, cpu)
    if g.shape[0] != out.shape[0] or lr.shape[0] != out.shape[0]:
        raise ValueError(f"g, lr and out must have the same rows; got {g.shape[0]}, "
                         f"{lr.shape[0]}, {out.shape[0]}")
    return d
