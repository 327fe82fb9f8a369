"""Mamba-1 selective scan, Triton kernels (through the interpreter) against the oracle
ssmc.semantics.selective.selective_scan_ref.  Shapes are tiny: the interpreter costs ~80 us per
element-step."""

import pytest
import torch

from ssmc.codegen.triton.selective_scan import (AssociativeScanConfig, ChunkedScanConfig,
                                                SequentialScanConfig, selective_scan)
from ssmc.semantics.selective import selective_scan_ref

# Small blocks so that tiny shapes still span several programs, chunks and L-blocks.
CONFIGS = {
    "sequential": SequentialScanConfig(block_d=4),
    "associative": AssociativeScanConfig(block_d=2, block_l=4),
    "chunked": ChunkedScanConfig(block_d=4, chunk=4),
}
ALGORITHMS = list(CONFIGS)


def make_inputs(b, d, L, N, *, layout="shared", groups=1, dtype=torch.float32, D=True, z=True,
                bias=True, initial=False, complex_A=False):
    """Well-conditioned inputs like a trained Mamba's: A = -(1..N), dt around softplus range."""
    A = -torch.arange(1, N + 1, dtype=torch.float32).repeat(d, 1) * (0.5 + torch.rand(d, 1))
    if complex_A:
        A = torch.complex(A, torch.randn(d, N))
    if layout == "invariant":
        B, C = torch.randn(d, N), torch.randn(d, N)
    elif layout == "shared":
        B, C = torch.randn(b, N, L), torch.randn(b, N, L)
    else:
        B, C = torch.randn(b, groups, N, L), torch.randn(b, groups, N, L)
    if complex_A:
        B = torch.complex(B, torch.randn_like(B))
        C = torch.complex(C, torch.randn_like(C))
    else:
        B, C = B.to(dtype), C.to(dtype)
    state = torch.complex64 if complex_A else torch.float32
    return dict(
        u=torch.randn(b, d, L).to(dtype),
        delta=(torch.randn(b, d, L) * 0.5 - 1.0).to(dtype),
        A=A, B=B, C=C,
        D=torch.randn(d) if D else None,
        z=torch.randn(b, d, L).to(dtype) if z else None,
        delta_bias=torch.randn(d) * 0.1 if bias else None,
        initial_state=torch.randn(b, d, N, dtype=state) if initial else None,
    )


def check(kernel_out, ref_out, tol):
    out, ref = kernel_out, ref_out
    assert out.dtype == ref.dtype and out.shape == ref.shape
    assert not torch.isnan(out.float()).any()
    t = tol[out.dtype] if out.dtype in tol else tol[torch.float32]
    torch.testing.assert_close(out, ref, **t)


def run_both(algorithm, inputs, *, softplus=True, last_state=True, config=None):
    kw = dict(inputs, delta_softplus=softplus, return_last_state=last_state)
    ours = selective_scan(**kw, algorithm=algorithm, config=config or CONFIGS[algorithm])
    ref = selective_scan_ref(**kw)
    return ours, ref


CASES = {
    # id: (b, d, L, N, make_inputs options, softplus)
    "B2-D5-L7-N4-shared": (2, 5, 7, 4, {}, True),
    "B1-D3-L1-N16-shared": (1, 3, 1, 16, {}, True),
    "B2-D6-L7-N16-groups2": (2, 6, 7, 16, dict(layout="grouped", groups=2), True),
    "B1-D5-L9-N4-invariant": (1, 5, 9, 4, dict(layout="invariant"), False),
    "B2-D5-L7-N4-bare": (2, 5, 7, 4, dict(D=False, z=False, bias=False), False),
    "B2-D3-L6-N4-initial": (2, 3, 6, 4, dict(initial=True), True),
}


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("case", list(CASES))
def test_fp32_matches_oracle(algorithm, case, tol):
    b, d, L, N, opts, softplus = CASES[case]
    (out, last), (ref, ref_last) = run_both(algorithm, make_inputs(b, d, L, N, **opts),
                                            softplus=softplus)
    check(out, ref, tol)
    check(last, ref_last, tol)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_half_inputs_fp32_state(algorithm, dtype, tol):
    inputs = make_inputs(2, 5, 7, 4, layout="grouped", groups=5, dtype=dtype, initial=True)
    (out, last), (ref, ref_last) = run_both(algorithm, inputs)
    assert last.dtype == torch.float32
    check(out, ref, tol)
    check(last, ref_last, tol)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("layout", ["invariant", "grouped"])
def test_complex_A_as_real_pairs(algorithm, layout, tol):
    inputs = make_inputs(2, 4, 7, 4, layout=layout, groups=2, complex_A=True, initial=True)
    (out, last), (ref, ref_last) = run_both(algorithm, inputs)
    check(out, ref, tol)
    assert last.dtype == torch.complex64
    torch.testing.assert_close(last, ref_last, **tol[torch.complex64])


@pytest.mark.parametrize("algorithm", ["sequential", "associative"])
def test_complex_A_without_conj_pair(algorithm, tol):
    inputs = make_inputs(1, 3, 5, 4, layout="invariant", complex_A=True)
    ours = selective_scan(**inputs, conj_pair=False, algorithm=algorithm,
                          config=CONFIGS[algorithm])
    check(ours, selective_scan_ref(**inputs, conj_pair=False), tol)


# Issue 4's grid: L in {1, 7, 64, 333}, every input dtype, real and complex A.  Chunk 16 and an
# L-block of 64: L=64 ends exactly on a boundary, L=333 leaves a ragged last chunk and block.
LENGTHS = [1, 7, 64, 333]
GRID_CONFIGS = {
    "sequential": SequentialScanConfig(block_d=4),
    "associative": AssociativeScanConfig(block_d=2, block_l=64),
    "chunked": ChunkedScanConfig(block_d=4, chunk=16),
}
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("L", LENGTHS)
def test_lengths_and_dtypes(algorithm, dtype, L, tol):
    inputs = make_inputs(1, 3, L, 4, layout="grouped", groups=3, dtype=DTYPES[dtype],
                         initial=True)
    (out, last), (ref, ref_last) = run_both(algorithm, inputs, config=GRID_CONFIGS[algorithm])
    check(out, ref, tol)
    assert last.dtype == torch.float32
    # the state sums L products of the inputs: compare it at the inputs' tolerance
    torch.testing.assert_close(last, ref_last, **tol[DTYPES[dtype]])


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("L", LENGTHS)
def test_complex_A_lengths(algorithm, L, tol):
    inputs = make_inputs(1, 3, L, 4, layout="grouped", groups=3, complex_A=True, initial=True)
    (out, last), (ref, ref_last) = run_both(algorithm, inputs, config=GRID_CONFIGS[algorithm])
    check(out, ref, tol)
    torch.testing.assert_close(last, ref_last, **tol[torch.complex64])


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("L", [7, 64])
def test_associative_complex_A_dtypes(dtype, L, tol):
    """The complex (a, b) pairs as four real tiles through tl.associative_scan, with fp16/bf16
    u, delta, z (B, C complex64): across L-blocks of 4 and within one block of 64."""
    inputs = make_inputs(1, 4, L, 4, layout="grouped", groups=2, dtype=DTYPES[dtype],
                         complex_A=True, initial=True)
    config = AssociativeScanConfig(block_d=2, block_l=4 if L == 7 else 64)
    (out, last), (ref, ref_last) = run_both("associative", inputs, config=config)
    check(out, ref, tol)
    assert last.dtype == torch.complex64
    torch.testing.assert_close(last, ref_last, **tol[DTYPES[dtype]])


def test_default_configs_and_no_last_state(tol):
    inputs = make_inputs(2, 5, 7, 4)
    ref = selective_scan_ref(**inputs, delta_softplus=True)
    for algorithm in ALGORITHMS:
        out = selective_scan(**inputs, delta_softplus=True, algorithm=algorithm)
        assert isinstance(out, torch.Tensor)
        check(out, ref, tol)


def test_strided_B_C_views(tol):
    """B and C as slices of one x_proj output, as Mamba produces them (non-contiguous)."""
    b, d, L, N = 2, 4, 6, 4
    proj = torch.randn(b, 2 * N + 3, L)
    inputs = make_inputs(b, d, L, N)
    inputs.update(B=proj[:, 3:3 + N], C=proj[:, 3 + N:])
    (out, _), (ref, _) = run_both("sequential", inputs)
    check(out, ref, tol)


# ------------------------------------------------------------------ argument checks

def _args():
    return make_inputs(2, 4, 5, 4)


@pytest.mark.parametrize("name, bad, message", [
    ("delta", torch.randn(2, 4, 6), r"^delta: expected shape \(batch=2, dim=4, seqlen=5\)"),
    ("A", torch.randn(3, 4), r"^A: expected shape \(dim=4, dstate=\?\)"),
    ("B", torch.randn(2, 4, 5, 5, 1), r"^B: expected \(dim, N\)"),
    ("B", torch.randn(2, 3, 4, 5), r"^B: 3 groups do not divide dim=4"),
    ("C", torch.randn(2, 5, 5), r"^C: expected shape \(batch=2, dstate=4, seqlen=5\)"),
    ("D", torch.randn(5), r"^D: expected shape \(dim=4\)"),
    ("z", torch.randn(2, 4, 5).to(torch.int32), r"^z: dtype int32 not supported"),
    ("u", [1.0], r"^u: expected a torch.Tensor"),
    ("B", torch.randn(2, 4, 5, dtype=torch.complex64), r"^B: complex B needs a complex A"),
])
def test_bad_argument_is_named(name, bad, message):
    kw = _args()
    kw[name] = bad
    with pytest.raises(ValueError, match=message):
        selective_scan(**kw)


def test_bad_algorithm_and_knobs():
    with pytest.raises(ValueError, match="^algorithm:"):
        selective_scan(**_args(), algorithm="parallel")
    with pytest.raises(ValueError, match="^block_d: must be a power of two"):
        SequentialScanConfig(block_d=3)
    with pytest.raises(ValueError, match="did you mean 'block_l'"):
        AssociativeScanConfig.from_dict({"block_ll": 8})


def test_cpu_tensors_need_the_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="^u: a CPU tensor"):
        selective_scan(**_args())


def test_device_mismatch_is_named():
    kw = _args()
    kw["D"] = kw["D"].to("meta")
    with pytest.raises(ValueError, match="^D: on meta"):
        selective_scan(**kw)
