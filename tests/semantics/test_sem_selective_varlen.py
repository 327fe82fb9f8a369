"""Mamba-1 selective scan with variable-length batches (cu_seqlens): the oracle on a packed row
means running each sequence on its own, with its own initial state, and one final state each."""

import pytest
import torch

from ssmc.semantics.selective import check_cu_seqlens, selective_scan_ref

d, N = 3, 4
EXACTISH = dict(rtol=1e-6, atol=1e-6)


def packed(lengths, *, bc="shared", cplx=False, initial=False):
    L = sum(lengths)
    A = -(0.5 + torch.rand(d, N))
    if cplx:
        A = torch.complex(A, torch.randn(d, N))
    shape = {"shared": (1, N, L), "grouped": (1, 3, N, L), "invariant": (d, N)}[bc]
    state = torch.complex64 if cplx else torch.float32
    return dict(u=torch.randn(1, d, L), delta=0.5 * torch.randn(1, d, L), A=A,
                B=torch.randn(shape), C=torch.randn(shape), D=torch.randn(d),
                z=torch.randn(1, d, L), delta_bias=0.1 * torch.randn(d),
                initial_state=torch.randn(len(lengths), d, N, dtype=state) if initial else None)


def offsets(lengths):
    return torch.tensor([0] + torch.tensor(lengths).cumsum(0).tolist(), dtype=torch.int32)


def one_by_one(args, lengths, **kw):
    """Each sequence through the oracle alone: (y of the packed row, final states)."""
    ys, lasts, start = [], [], 0
    for s, n in enumerate(lengths):
        piece = dict(args)
        for k in ("u", "delta", "z"):
            piece[k] = args[k][..., start:start + n]
        for k in ("B", "C"):
            piece[k] = args[k] if args[k].dim() == 2 else args[k][..., start:start + n]
        if args["initial_state"] is not None:
            piece["initial_state"] = args["initial_state"][s:s + 1]
        y, last = selective_scan_ref(**piece, return_last_state=True, **kw)
        ys.append(y)
        lasts.append(last)
        start += n
    return torch.cat(ys, dim=2), torch.cat(lasts)


CASES = {
    "one-step": ([1], {}),
    "ones-and-empty": ([1, 0, 1, 1], dict(initial=True)),
    "mixed-grouped": ([3, 1, 0, 5], dict(bc="grouped", initial=True)),
    "invariant": ([4, 2], dict(bc="invariant")),
    "complex": ([2, 0, 5, 1], dict(cplx=True, initial=True)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_packed_row_is_each_sequence_alone(case):
    lengths, opts = CASES[case]
    args = packed(lengths, **opts)
    y, last = selective_scan_ref(**args, delta_softplus=True, return_last_state=True,
                                 cu_seqlens=offsets(lengths))
    want_y, want_last = one_by_one(args, lengths, delta_softplus=True)
    assert y.shape == (1, d, sum(lengths)) and last.shape == (len(lengths), d, N)
    # the same steps, but torch's vector exp may round a lane differently on another length
    torch.testing.assert_close(y, want_y, **EXACTISH)
    torch.testing.assert_close(last, want_last, **EXACTISH)


def test_the_state_really_restarts():
    lengths = [3, 4]
    args = packed(lengths)
    split = selective_scan_ref(**args, cu_seqlens=offsets(lengths))
    whole = selective_scan_ref(**args)
    torch.testing.assert_close(split[..., :3], whole[..., :3], **EXACTISH)
    assert not torch.allclose(split[..., 3:], whole[..., 3:])


def test_one_sequence_is_the_plain_scan():
    args = packed([6], initial=True)
    a = selective_scan_ref(**args, return_last_state=True, cu_seqlens=offsets([6]))
    b = selective_scan_ref(**args, return_last_state=True)
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, **EXACTISH)


def test_an_empty_sequence_ends_with_its_initial_state():
    args = packed([2, 0, 3], initial=True)
    _, last = selective_scan_ref(**args, return_last_state=True, cu_seqlens=offsets([2, 0, 3]))
    torch.testing.assert_close(last[1], args["initial_state"][1], rtol=0, atol=0)


def test_gradients_flow_through_the_packed_row():
    lengths = [2, 3]
    args = packed(lengths, initial=True)
    args["u"].requires_grad_(True)
    args["initial_state"].requires_grad_(True)
    y, last = selective_scan_ref(**args, return_last_state=True, cu_seqlens=offsets(lengths))
    (y.sum() + last.sum()).backward()
    assert args["u"].grad is not None and args["initial_state"].grad is not None


@pytest.mark.parametrize("cu, batch", [
    (torch.tensor([0, 3, 2, 5]), 1),  # not increasing
    (torch.tensor([0, 3, 4]), 1),  # does not end at L = 5
    (torch.tensor([1, 5]), 1),  # does not start at 0
    (torch.tensor([0.0, 5.0]), 1),  # not an int tensor
    (torch.tensor([[0, 5]]), 1),  # not 1-D
    (torch.tensor([5]), 1),  # no sequence
    ([0, 5], 1),  # not a tensor
    (torch.tensor([0, 5]), 2),  # not a packed row of one
])
def test_bad_cu_seqlens_is_named(cu, batch):
    with pytest.raises(ValueError, match="^cu_seqlens: "):
        check_cu_seqlens(cu, batch, 5)
    args = packed([5])
    if batch == 2:
        args = {k: torch.cat([v, v]) if k in ("u", "delta", "z", "B", "C") else v
                for k, v in args.items()}
    with pytest.raises(ValueError, match="^cu_seqlens: "):
        selective_scan_ref(**args, cu_seqlens=cu)


def test_initial_state_must_be_per_sequence():
    args = packed([2, 3])
    args["initial_state"] = torch.randn(1, d, N)
    with pytest.raises(ValueError, match=r"^initial_state: .*\(2, d, N\)"):
        selective_scan_ref(**args, cu_seqlens=offsets([2, 3]))
