"""Mamba-1 selective scan with variable-length batches (cu_seqlens), Triton kernels through the
interpreter: a packed row must give what each sequence gives alone through the oracle, with its
own initial state and its own final state.  Tiny shapes: the interpreter costs ~80 us per
element-step."""

import pytest
import torch

from ssmc.codegen.triton.selective_scan import (AssociativeScanConfig, ChunkedScanConfig,
                                                SequentialScanConfig, selective_scan)
from ssmc.semantics.selective import selective_scan_ref

# Packed rows of total length L in {1, 7, 64, 333}, with sequences of one step and empty ones.
# With chunk 16 and L-block 64 (GRID) sequences start on and off chunk / block boundaries;
# with chunk 4 and L-block 4 (SMALL) one sequence spans several chunks and blocks.
PACKINGS = {1: [1], 7: [1, 2, 0, 4], 64: [16, 1, 30, 17], 333: [1, 100, 64, 0, 167, 1]}
GRID = {
    "sequential": SequentialScanConfig(block_d=4),
    "associative": AssociativeScanConfig(block_d=2, block_l=64),
    "chunked": ChunkedScanConfig(block_d=4, chunk=16),
}
SMALL = {
    "sequential": SequentialScanConfig(block_d=2),
    "associative": AssociativeScanConfig(block_d=2, block_l=4),
    "chunked": ChunkedScanConfig(block_d=2, chunk=4),
}
ALGORITHMS = list(GRID)
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def packed(lengths, *, d=3, N=4, dtype=torch.float32, complex_A=False, initial=True):
    """One packed row (batch 1) with B, C in 3 groups, well conditioned like a trained Mamba."""
    L = sum(lengths)
    A = -torch.arange(1, N + 1, dtype=torch.float32).repeat(d, 1) * (0.5 + torch.rand(d, 1))
    B, C = torch.randn(1, 3, N, L), torch.randn(1, 3, N, L)
    state = torch.float32
    if complex_A:
        A = torch.complex(A, torch.randn(d, N))
        B, C = torch.complex(B, torch.randn_like(B)), torch.complex(C, torch.randn_like(C))
        state = torch.complex64
    else:
        B, C = B.to(dtype), C.to(dtype)
    return dict(u=torch.randn(1, d, L).to(dtype),
                delta=(torch.randn(1, d, L) * 0.5 - 1.0).to(dtype), A=A, B=B, C=C,
                D=torch.randn(d), z=torch.randn(1, d, L).to(dtype),
                delta_bias=torch.randn(d) * 0.1,
                initial_state=torch.randn(len(lengths), d, N, dtype=state) if initial else None)


def offsets(lengths, dtype=torch.int32):
    return torch.tensor([0] + torch.tensor(lengths).cumsum(0).tolist(), dtype=dtype)


def one_by_one(args, lengths):
    """The oracle on each sequence alone -> (y of the packed row, final states)."""
    ys, lasts, start = [], [], 0
    for s, n in enumerate(lengths):
        piece = {k: v[..., start:start + n] if k in ("u", "delta", "z", "B", "C") else v
                 for k, v in args.items()}
        if args["initial_state"] is not None:
            piece["initial_state"] = args["initial_state"][s:s + 1]
        y, last = selective_scan_ref(**piece, delta_softplus=True, return_last_state=True)
        ys.append(y)
        lasts.append(last)
        start += n
    return torch.cat(ys, dim=2), torch.cat(lasts)


def run_packed(algorithm, args, lengths, config):
    return selective_scan(**args, delta_softplus=True, return_last_state=True,
                          cu_seqlens=offsets(lengths), algorithm=algorithm, config=config)


def check(got, want, tol):
    (out, last), (ref, ref_last) = got, want
    assert out.shape == ref.shape and out.dtype == ref.dtype
    assert last.shape == ref_last.shape and last.dtype == ref_last.dtype
    torch.testing.assert_close(out, ref, **tol[out.dtype])
    # the state sums many products of the inputs: compare it at the inputs' tolerance
    torch.testing.assert_close(last, ref_last, **tol[out.dtype])


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("L", list(PACKINGS))
def test_packed_row_is_each_sequence_alone(algorithm, L, tol):
    lengths = PACKINGS[L]
    args = packed(lengths)
    check(run_packed(algorithm, args, lengths, GRID[algorithm]), one_by_one(args, lengths), tol)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("L", [7, 64])
def test_complex_A(algorithm, L, tol):
    lengths = PACKINGS[L]
    args = packed(lengths, complex_A=True)
    config = SMALL[algorithm] if L == 7 else GRID[algorithm]
    check(run_packed(algorithm, args, lengths, config), one_by_one(args, lengths), tol)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_half_inputs(algorithm, dtype, tol):
    lengths = PACKINGS[7]
    args = packed(lengths, dtype=DTYPES[dtype])
    out, last = run_packed(algorithm, args, lengths, SMALL[algorithm])
    assert last.dtype == torch.float32
    check((out, last), one_by_one(args, lengths), tol)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_sequences_across_chunks_without_initial_states(algorithm, tol):
    """Sequences longer than a chunk / L-block, restarting from 0; the oracle on the packed row
    with cu_seqlens is the same as one by one."""
    lengths = [9, 1, 0, 6]
    args = packed(lengths, initial=False)
    got = run_packed(algorithm, args, lengths, SMALL[algorithm])
    check(got, one_by_one(args, lengths), tol)
    want = selective_scan_ref(**args, delta_softplus=True, return_last_state=True,
                              cu_seqlens=offsets(lengths, torch.int64))
    check(got, want, tol)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_output_only_and_empty_sequence_state(algorithm, tol):
    lengths = [0, 3, 0]
    args = packed(lengths)
    out = selective_scan(**args, cu_seqlens=offsets(lengths), algorithm=algorithm,
                         config=SMALL[algorithm])
    assert isinstance(out, torch.Tensor)
    _, last = run_packed(algorithm, args, lengths, SMALL[algorithm])
    # empty sequences end where they start
    torch.testing.assert_close(last[0], args["initial_state"][0], rtol=0, atol=0)
    torch.testing.assert_close(last[2], args["initial_state"][2], rtol=0, atol=0)


@pytest.mark.parametrize("bad, message", [
    (torch.tensor([0, 5, 3, 7], dtype=torch.int32), "non-decreasing offsets"),
    (torch.tensor([0, 3, 6], dtype=torch.int32), "from 0 to seqlen 7"),
    (torch.tensor([1, 3, 7], dtype=torch.int32), "from 0 to seqlen 7"),
    (torch.tensor([0.0, 7.0]), "int32/int64"),
    (torch.tensor([[0, 7]], dtype=torch.int32), "1-D"),
    ([0, 7], "expected a torch.Tensor"),
])
def test_bad_cu_seqlens_is_named(bad, message):
    args = packed([7], initial=False)
    with pytest.raises(ValueError, match=f"^cu_seqlens: .*{message}"):
        selective_scan(**args, cu_seqlens=bad)


def test_cu_seqlens_needs_a_packed_row():
    args = packed([7], initial=False)
    args = {k: torch.cat([v, v]) if k in ("u", "delta", "z", "B", "C") else v
            for k, v in args.items()}
    with pytest.raises(ValueError, match="^cu_seqlens: needs a packed batch of one row"):
        selective_scan(**args, cu_seqlens=offsets([7]))


def test_cu_seqlens_on_another_device_is_named():
    args = packed([7], initial=False)
    with pytest.raises(ValueError, match="^cu_seqlens: "):
        selective_scan(**args, cu_seqlens=offsets([7]).to("meta"))


def test_initial_state_is_per_sequence():
    args = packed([3, 4])
    args["initial_state"] = args["initial_state"][:1]
    with pytest.raises(ValueError, match=r"^initial_state: expected shape \(num_seqs=2"):
        selective_scan(**args, cu_seqlens=offsets([3, 4]))
