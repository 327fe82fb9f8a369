"""The TVM selective-scan kernels against the oracle ssmc.semantics.selective.selective_scan_ref.

Kernels are specialised on (d, N, groups, flags) and symbolic in b and L, so each distinct
signature below is one build (about a second); the cache is one temporary directory for the
whole module, and several tests reuse a build on purpose (different L, layouts, dtypes).
"""

import pytest
import torch

pytest.importorskip("tvm")

from ssmc.codegen.tvm import (  # noqa: E402
    Config,
    ScanSignature,
    selective_scan,
    selective_scan_cuda_source,
)
from ssmc.codegen.tvm.build import KernelCache  # noqa: E402
from ssmc.semantics.selective import selective_scan_ref  # noqa: E402


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return KernelCache(root=tmp_path_factory.mktemp("tvm_cache"))


def make_inputs(b=2, d=16, L=64, N=8, groups=None, time_invariant=False, cplx=False,
                cplx_bc=False, D=True, z=True, bias=True, h0=True, dtype=torch.float32):
    """mamba-ssm-style random inputs in the 'bdl' layout (as its tests draw them)."""
    g = torch.Generator().manual_seed(1234)

    def rn(*s):
        return torch.randn(*s, generator=g)

    u = rn(b, d, L).to(dtype)
    delta = (0.5 * torch.rand(b, d, L, generator=g)).to(dtype)
    if cplx:
        A = torch.complex(-0.5 * torch.rand(d, N, generator=g), rn(d, N))
    else:
        A = -0.5 * torch.rand(d, N, generator=g)
    if time_invariant:
        shape = (d, N)
    elif groups is None:
        shape = (b, N, L)
    else:
        shape = (b, groups, N, L)
    if cplx_bc:
        B, C = torch.complex(rn(*shape), rn(*shape)), torch.complex(rn(*shape), rn(*shape))
    else:
        B, C = rn(*shape).to(dtype), rn(*shape).to(dtype)
    kw = dict(
        D=rn(d) if D else None,
        z=rn(b, d, L).to(dtype) if z else None,
        delta_bias=0.5 * torch.rand(d, generator=g) if bias else None,
        initial_state=(torch.complex(rn(b, d, N), rn(b, d, N)) if cplx else rn(b, d, N))
        if h0 else None,
    )
    return (u, delta, A, B, C), kw


def check(args, kw, tol, dtype=torch.float32, layout="bdl", config=None, cache=None,
          softplus=True):
    y_ref, last_ref = selective_scan_ref(*args, **kw, delta_softplus=softplus,
                                         return_last_state=True)
    if layout == "bld":
        u, delta, A, B, C = args
        B = B.transpose(1, 2) if B.dim() == 3 else B.permute(0, 3, 1, 2) if B.dim() == 4 else B
        C = C.transpose(1, 2) if C.dim() == 3 else C.permute(0, 3, 1, 2) if C.dim() == 4 else C
        args = (u.transpose(1, 2), delta.transpose(1, 2), A, B, C)
        kw = dict(kw, z=kw["z"].transpose(1, 2) if kw.get("z") is not None else None)
    y, last = selective_scan(*args, **kw, delta_softplus=softplus, return_last_state=True,
                             layout=layout, config=config, cache=cache)
    if layout == "bld":
        y = y.transpose(1, 2)
    assert y.dtype == y_ref.dtype and y.shape == y_ref.shape
    torch.testing.assert_close(y, y_ref, **tol[dtype])
    torch.testing.assert_close(last, last_ref, **tol[torch.float32])


# (name, make_inputs kwargs, L values reusing one build)
CASES = [
    ("all_flags_tail_d", dict(d=100, N=16), (1, 7, 1000)),
    ("n1_d7_plain", dict(d=7, N=1, D=False, z=False, bias=False, h0=False), (7, 4097)),
    ("n64_grouped", dict(d=32, N=64, groups=4, z=False, h0=False), (300,)),
    ("n4_time_invariant_bc", dict(d=24, N=4, time_invariant=True, bias=False), (129,)),
    ("complex_a", dict(d=24, N=8, cplx=True), (1, 200)),
    ("complex_bc_grouped", dict(d=16, N=4, cplx=True, cplx_bc=True, groups=2, z=False),
     (70,)),
]


@pytest.mark.parametrize("name,kw,lengths", CASES, ids=[c[0] for c in CASES])
def test_matches_reference(name, kw, lengths, tol, cache):
    before = cache.stats.compiled
    for L in lengths:
        args, extra = make_inputs(L=L, **kw)
        check(args, extra, tol, cache=cache)
    # b and L are symbolic: every length above ran on a single build
    assert cache.stats.compiled - before <= 1


def test_softplus_off_and_no_bias(tol, cache):
    args, kw = make_inputs(d=100, N=16, L=50, bias=False)
    check(args, kw, tol, cache=cache, softplus=False)


def test_channels_last_layout(tol, cache):
    """layout='bld' (what compiled models pass): the kernel reads it as is, any L."""
    before = cache.stats.compiled
    for L in (333, 64):
        args, kw = make_inputs(d=100, N=16, L=L)
        check(args, kw, tol, layout="bld", cache=cache)
    assert cache.stats.compiled - before <= 1


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs(dtype, tol, cache):
    args, kw = make_inputs(d=100, N=16, L=257, dtype=dtype)
    check(args, kw, tol, dtype=dtype, cache=cache)


def test_bdl_kernel_layout_tiles_and_tail(tol, cache):
    """The in-kernel transposing layout: full tiles, the L % time_tile rest, L < tile."""
    cfg = Config(layout="bdl", time_tile=8)
    for L in (5, 8, 203):
        args, kw = make_inputs(d=100, N=16, L=L)
        check(args, kw, tol, config=cfg, cache=cache)
        check(args, kw, tol, config=cfg, cache=cache, layout="bld")


def test_schedule_knobs_keep_the_meaning(tol, cache):
    """threads-chunked tasks, partial N unroll, narrow vectors and a block that is not a
    multiple of the vector width (legalised)."""
    cfg = Config(channel_block=10, vector_width=4, n_unroll=4, threads=3)
    args, kw = make_inputs(d=100, N=16, L=90)
    check(args, kw, tol, config=cfg, cache=cache)


def test_fused_conv_prologue(tol, cache):
    """u = silu(causal_conv1d(x)) computed inside the scan kernel (channels-last input)."""
    from ssmc.codegen.tvm.guard_page import after_guard_page
    from ssmc.semantics.glue import causal_conv1d

    g = torch.Generator().manual_seed(5)
    b, d, N, k = 2, 100, 16, 4
    w, cb = 0.5 * torch.randn(d, 1, k, generator=g), torch.randn(d, generator=g)
    for L in (2, 77):  # shorter than the conv window, and longer
        args, kw = make_inputs(b=b, d=d, L=L, N=N, h0=False)
        u_bdl, delta, A, B, C = args
        x = u_bdl.transpose(1, 2).contiguous()  # the conv's input, (b, L, d)
        u = causal_conv1d(x, w, cb, "silu").transpose(1, 2)
        y_ref = selective_scan_ref(u, delta, A, B, C, **kw, delta_softplus=True)
        bld = dict(kw, z=kw["z"].transpose(1, 2))
        with after_guard_page(x) as xg:  # no read before the sequence start
            y = selective_scan(xg, delta.transpose(1, 2), A, B.transpose(1, 2),
                               C.transpose(1, 2), **bld, delta_softplus=True, layout="bld",
                               conv_weight=w, conv_bias=cb, cache=cache)
        torch.testing.assert_close(y.transpose(1, 2), y_ref, **tol[torch.float32])


def test_strided_and_unaligned_inputs(tol, cache):
    args, kw = make_inputs(d=100, N=16, L=100)
    u, delta, A, B, C = args
    big = torch.empty(u.numel() + 1)
    u_off = big[1:].view_as(u).copy_(u)  # data pointer 4 bytes past an aligned one
    delta_t = delta.transpose(1, 2).contiguous().transpose(1, 2)  # non-contiguous view
    check((u_off, delta_t, A, B, C), kw, tol, cache=cache)


def test_empty_sequence():
    args, kw = make_inputs(d=16, N=8, L=0)
    y, last = selective_scan(*args, **kw, return_last_state=True)
    assert y.shape == (2, 16, 0)
    torch.testing.assert_close(last, kw["initial_state"])


def test_second_run_loads_from_disk_without_compiling(cache, tmp_path):
    args, kw = make_inputs(d=100, N=16, L=10)
    selective_scan(*args, **kw, delta_softplus=True, cache=cache)
    fresh = KernelCache(root=cache.root)  # what a new process sees: an empty memory
    y = selective_scan(*args, **kw, delta_softplus=True, cache=fresh)
    assert fresh.stats.compiled == 0 and fresh.stats.disk_hits == 1
    assert list(cache.directory().glob("selective_scan-*.so"))
    assert not list(cache.directory().glob(".*"))  # no temporary file left behind
    torch.testing.assert_close(y, selective_scan_ref(*args, **kw, delta_softplus=True),
                               rtol=6e-4, atol=2e-3)


_SECOND_PROCESS = """
import torch
from ssmc.codegen.tvm import selective_scan
from ssmc.codegen.tvm.build import DEFAULT_CACHE
u, dl = torch.randn(2, 100, 10), torch.rand(2, 100, 10)
A, B, C = -torch.rand(100, 16), torch.randn(2, 16, 10), torch.randn(2, 16, 10)
selective_scan(u, dl, A, B, C, delta_softplus=True)
s = DEFAULT_CACHE.stats
print(s.compiled, s.disk_hits)
"""


def test_a_new_process_loads_from_disk(tmp_path):
    """The real thing: a second Python process with the same SSMC_CACHE_DIR compiles nothing."""
    import os
    import subprocess
    import sys

    first = KernelCache(root=tmp_path / "tvm")  # this process builds ...
    g = torch.Generator().manual_seed(0)
    u, dl = torch.randn(2, 100, 10, generator=g), torch.rand(2, 100, 10, generator=g)
    A, B, C = -torch.rand(100, 16, generator=g), torch.randn(2, 16, 10), torch.randn(2, 16, 10)
    selective_scan(u, dl, A, B, C, delta_softplus=True, cache=first)
    assert first.stats.compiled == 1
    env = dict(os.environ, SSMC_CACHE_DIR=str(tmp_path))  # ... the next one only loads
    out = subprocess.run([sys.executable, "-c", _SECOND_PROCESS], env=env, check=True,
                         capture_output=True, text=True).stdout.split()
    assert out == ["0", "1"]


def test_cache_dir_from_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("SSMC_CACHE_DIR", str(tmp_path))
    assert KernelCache().directory() == tmp_path / "tvm"


# ----------------------------------------------------------------------------- bad arguments
def _bad(**changes):
    args, kw = make_inputs(d=16, N=8, L=10)
    names = ["u", "delta", "A", "B", "C"]
    call = dict(zip(names, args), **kw)
    call.update(changes)
    return call


@pytest.mark.parametrize("arg,value,expect", [
    ("u", torch.randn(2, 16), "(b, d, L)"),
    ("delta", torch.randn(2, 16, 11), "(b, d, L)=(2, 16, 10)"),
    ("A", torch.randn(15, 8), "(d, N)"),
    ("B", torch.randn(2, 3, 8, 10), "(b, g, N, L) with g dividing d=16"),
    ("C", torch.randn(2, 9, 10), "(b, N, L)"),
    ("D", torch.randn(17), "(d,)=(16,)"),
    ("z", torch.randn(2, 16, 9), "(b, d, L)=(2, 16, 10)"),
    ("delta_bias", torch.randn(16, 1), "(d,)=(16,)"),
    ("initial_state", torch.randn(2, 16, 7), "(b, d, N)=(2, 16, 8)"),
    ("u", torch.randint(0, 3, (2, 16, 10)), "dtype"),
    ("delta", torch.randn(2, 16, 10, device="meta"), "CPU tensor"),
    ("conv_weight", torch.randn(16, 2, 4), "(d, 1, k) or (d, k) with d=16"),
    ("conv_bias", torch.randn(16), "together with conv_weight"),
])
def test_bad_arguments_name_the_argument(arg, value, expect):
    call = _bad(**{arg: value})
    with pytest.raises(ValueError) as err:
        selective_scan(**call)
    msg = str(err.value)
    assert f" {arg} must be" in msg and expect in msg, msg


def test_bad_layout_and_complex_bc_with_real_a():
    with pytest.raises(ValueError, match="layout"):
        selective_scan(**_bad(), layout="dbl")
    args, kw = make_inputs(d=16, N=8, L=10)
    B = torch.complex(args[3], args[3])
    with pytest.raises(ValueError, match="B must be real"):
        selective_scan(args[0], args[1], args[2], B, args[4])


# ----------------------------------------------------------------------------- CUDA source
@pytest.mark.parametrize("sig", [
    ScanSignature(d=100, N=16, has_D=True, has_z=True, has_delta_bias=True,
                  delta_softplus=True, has_initial_state=True, return_last_state=True),
    ScanSignature(d=64, N=8, b_groups=2, c_groups=2, complex_a=True, complex_b=True),
    ScanSignature(d=128, N=16, heads=8, b_groups=2, c_groups=2, delta_softplus=True,
                  has_seq_idx=True, dt_min=0.001),
], ids=["real_all_flags", "complex_grouped", "ssd_heads"])
def test_cuda_source_from_the_same_builder(sig):
    src = selective_scan_cuda_source(sig, arch="sm_90")
    assert '__global__' in src and "selective_scan" in src
    assert "threadIdx.x" in src and "blockIdx.x" in src
    assert "expf" not in src  # the polynomial exp, not libdevice


def test_cuda_source_compiles_to_ptx(tmp_path):
    """The generated CUDA C is valid: nvcc turns it into PTX (no GPU needed); skipped where
    the CUDA toolkit is absent."""
    import shutil
    import subprocess

    nvcc = shutil.which("nvcc")
    if nvcc is None:
        pytest.skip("nvcc not installed")
    sig = ScanSignature(d=64, N=16, has_D=True, has_z=True, delta_softplus=True,
                        has_delta_bias=True, has_initial_state=True, return_last_state=True)
    src = tmp_path / "scan.cu"
    src.write_text(selective_scan_cuda_source(sig, arch="sm_90"))
    subprocess.run([nvcc, "-arch=sm_90", "-ptx", str(src), "-o", str(tmp_path / "scan.ptx")],
                   check=True, capture_output=True, timeout=300)
    assert ".entry selective_scan_kernel" in (tmp_path / "scan.ptx").read_text()
