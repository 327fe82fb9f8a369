"""Mamba-2 SSD chunked kernels (through the interpreter) against ssmc.semantics.selective.ssd_ref.
Chunk 16 (tl.dot's smallest), headdim 8 (padded to a 16-wide block), several chunks."""

import math

import pytest
import torch

from ssmc.codegen.triton.ssd import SsdChunkedConfig, ssd_chunked
from ssmc.semantics.selective import ssd_ref

SMALL = SsdChunkedConfig(chunk=16, block_m=16, block_k=16, block_p=16, block_h=2,
                         block_state=32)


def make_inputs(b, L, h, p, g, n, dtype=torch.float32):
    """dt raw (softplus'd by the kernels), A < 0: a decaying state, as in trained models."""
    return dict(
        x=torch.randn(b, L, h, p).to(dtype),
        dt=(torch.randn(b, L, h) * 0.5 - 1.0).to(dtype),
        A=-(torch.rand(h) + 0.5),
        B=torch.randn(b, L, g, n).to(dtype),
        C=torch.randn(b, L, g, n).to(dtype),
    )


def check(out, ref, tol):
    assert out.dtype == ref.dtype and out.shape == ref.shape
    assert not torch.isnan(out.float()).any()
    torch.testing.assert_close(out, ref, **tol[out.dtype])


CASES = {
    # id: ((b, L, h, p, g, n), options)
    "B2-L40-H4-P8-G2-N4-full": ((2, 40, 4, 8, 2, 4), dict(
        D="h", z=True, dt_bias=True, dt_softplus=True, initial_states=True)),
    "B1-L1-H2-P8-G1-N16": ((1, 1, 2, 8, 1, 16), dict(dt_softplus=True)),
    "B2-L7-H4-P8-G1-N16-Dhp": ((2, 7, 4, 8, 1, 16), dict(D="hp", dt_softplus=True,
                                                            initial_states=True)),
    "B1-L33-H2-P20-G2-N4-limit": ((1, 33, 2, 20, 2, 4), dict(
        dt_bias=True, dt_softplus=True, dt_limit=(0.05, 0.5), z=True)),
    "B1-L16-H2-P8-G1-N4-raw-dt": ((1, 16, 2, 8, 1, 4), dict(dt_limit=(0.0, 1.0))),
}


def build(case, dtype=torch.float32):
    shape, opts = CASES[case]
    b, L, h, p, g, n = shape
    kw = make_inputs(b, L, h, p, g, n, dtype)
    for key, value in opts.items():
        if key == "D":
            kw["D"] = torch.randn(h) if value == "h" else torch.randn(h, p)
        elif key == "z":
            kw["z"] = torch.randn(b, L, h, p).to(dtype)
        elif key == "dt_bias":
            kw["dt_bias"] = torch.randn(h) * 0.1
        elif key == "initial_states":
            kw["initial_states"] = torch.randn(b, h, p, n)
        else:
            kw[key] = value
    if "raw" in case:  # dt used as is: keep it positive
        kw["dt"] = kw["dt"].abs()
    return kw


@pytest.mark.parametrize("case", list(CASES))
def test_fp32_matches_oracle(case, tol):
    kw = build(case)
    out, final = ssd_chunked(**kw, return_final_states=True, config=SMALL)
    ref, ref_final = ssd_ref(**kw, return_final_states=True)
    check(out, ref, tol)
    check(final, ref_final, tol)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_half_inputs(dtype, tol):
    kw = build("B2-L40-H4-P8-G2-N4-full", dtype)
    out, final = ssd_chunked(**kw, return_final_states=True, config=SMALL)
    ref, ref_final = ssd_ref(**kw, return_final_states=True)
    assert final.dtype == torch.float32
    check(out, ref, tol)
    # the final state sums whole chunks of 16-bit products: compare at the input's tolerance
    torch.testing.assert_close(final, ref_final, **tol[dtype])


# Issue 4's grid: L in {1, 7, 64, 333} and every input dtype, all options on.  Chunk 16: L=64
# ends exactly on a chunk boundary, L=333 leaves a ragged last chunk.
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16],
                         ids=["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("L", [1, 7, 64, 333])
def test_lengths_and_dtypes(L, dtype, tol):
    b, h, p, g, n = 1, 2, 8, 1, 4
    kw = make_inputs(b, L, h, p, g, n, dtype)
    kw.update(D=torch.randn(h), z=torch.randn(b, L, h, p).to(dtype), dt_bias=torch.randn(h) * 0.1,
              initial_states=torch.randn(b, h, p, n), dt_softplus=True)
    out, final = ssd_chunked(**kw, return_final_states=True, config=SMALL)
    ref, ref_final = ssd_ref(**kw, return_final_states=True)
    check(out, ref, tol)
    assert final.dtype == torch.float32
    torch.testing.assert_close(final, ref_final, **tol[dtype])


def test_seq_idx_resets_state(tol):
    kw = build("B2-L40-H4-P8-G2-N4-full")
    seq_idx = torch.tensor([[0] * 10 + [1] * 20 + [2] * 10, [0] * 16 + [1] * 24],
                           dtype=torch.int32)
    out, final = ssd_chunked(**kw, seq_idx=seq_idx, return_final_states=True, config=SMALL)
    ref, ref_final = ssd_ref(**kw, seq_idx=seq_idx, return_final_states=True)
    check(out, ref, tol)
    check(final, ref_final, tol)


def test_chunk_size_argument_and_defaults(tol):
    kw = build("B2-L7-H4-P8-G1-N16-Dhp")
    ref = ssd_ref(**kw)
    check(ssd_chunked(**kw, chunk_size=32), ref, tol)  # mamba-ssm's positional chunk_size
    check(ssd_chunked(**kw), ref, tol)  # default config


@pytest.mark.parametrize("name, bad, message", [
    ("dt", torch.randn(2, 7, 3), r"^dt: expected shape \(batch=2, seqlen=7, heads=4\)"),
    ("B", torch.randn(2, 7, 3, 16), r"^B: 3 groups do not divide heads=4"),
    ("C", torch.randn(2, 7, 1, 8), r"^C: expected shape"),
    ("D", torch.randn(4, 3), r"^D: expected shape \(heads=4\) or"),
    ("dt_limit", (1.0, 0.5), r"^dt_limit: low 1.0 is above high 0.5"),
    ("seq_idx", torch.zeros(2, 7), r"^seq_idx: dtype float32 not supported"),
    ("chunk_size", 24, r"^chunk_size: must be a power of two >= 16"),
])
def test_bad_argument_is_named(name, bad, message):
    kw = build("B2-L7-H4-P8-G1-N16-Dhp")
    kw[name] = bad
    with pytest.raises(ValueError, match=message):
        ssd_chunked(**kw)


def test_bad_knobs():
    with pytest.raises(ValueError, match="^block_k: tl.dot needs at least 16"):
        SsdChunkedConfig(block_k=8)
    with pytest.raises(ValueError, match="^dot_precision:"):
        SsdChunkedConfig(dot_precision="tf64")


def test_infinite_dt_limit_is_no_limit(tol):
    kw = build("B1-L1-H2-P8-G1-N16")
    out = ssd_chunked(**kw, dt_limit=(0.0, math.inf), config=SMALL)
    check(out, ssd_ref(**kw), tol)
