"""Argument checks of the torch-facing TVM ops: every bad argument raises ValueError naming the
op, the argument and what was expected (shape with the sizes already known, dtype, device)."""

from __future__ import annotations

import torch

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def fail(op: str, name: str, expected: str, got) -> ValueError:
    return ValueError(f"{op}: {name} must be {expected}; got {got}")


def describe(t) -> str:
    if not isinstance(t, torch.Tensor):
        return type(t).__name__
    return f"shape {tuple(t.shape)} dtype {t.dtype} device {t.device}"


def same_shape(shape, want) -> bool:
    # element by element: torch.compile traced `tuple(shape) in [...]` to False when the
    # sizes were symbolic (a model compiled after another one with other input ranks)
    return len(shape) == len(want) and all(a == b for a, b in zip(shape, want))


def check_tensor(op: str, name: str, t, shapes, expected_text: str, dtypes=FLOAT_DTYPES):
    """t must be a CPU tensor with one of `shapes` and a dtype in `dtypes`.  Returns t."""
    if not isinstance(t, torch.Tensor):
        raise fail(op, name, f"a torch.Tensor of {expected_text}", describe(t))
    if t.device.type != "cpu":
        raise fail(op, name, f"a CPU tensor of {expected_text} (the TVM backend runs on the "
                             "host)", describe(t))
    if t.dtype not in dtypes:
        raise fail(op, name, f"{expected_text} with dtype in {[str(d) for d in dtypes]}",
                   describe(t))
    if not any(same_shape(t.shape, s) for s in shapes):
        raise fail(op, name, expected_text, describe(t))
    return t
