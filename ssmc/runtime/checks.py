"""Argument checks at call time: a wrong shape, dtype or device names the argument and what was
expected, as a ValueError (an SsmcError too, so the CLI reports it in one line)."""

from __future__ import annotations

import torch

from ssmc.errors import SsmcError

FLOATS = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
FLOATS_OR_COMPLEX = FLOATS + (torch.complex64, torch.complex128)


class ArgumentError(SsmcError, ValueError):
    pass


def tensor(name: str, t, ndim=None, dtypes=FLOATS, device=None, optional=False):
    if t is None:
        if optional:
            return None
        raise ArgumentError(f"{name}: required, got None")
    if not isinstance(t, torch.Tensor):
        raise ArgumentError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if ndim is not None and t.dim() not in (ndim if isinstance(ndim, tuple) else (ndim,)):
        raise ArgumentError(f"{name}: expected {ndim} dimensions, got shape {tuple(t.shape)}")
    if dtypes is not None and t.dtype not in dtypes:
        names = ", ".join(str(d).replace("torch.", "") for d in dtypes)
        raise ArgumentError(f"{name}: expected dtype in ({names}), got {str(t.dtype).replace('torch.', '')}")
    if device is not None and t.device != device:
        raise ArgumentError(f"{name}: on {t.device}, but the other inputs are on {device}")
    return t


def shape(name: str, t, expected: tuple, labels: str) -> None:
    """expected: ints (None = any); labels: the axis names, e.g. '(b, d, L)'."""
    if t is None:
        return
    got = tuple(t.shape)
    if len(got) != len(expected) or any(e is not None and e != g for e, g in zip(expected, got)):
        want = ", ".join("?" if e is None else str(e) for e in expected)
        raise ArgumentError(f"{name}: expected shape {labels} = ({want}), got {got}")
