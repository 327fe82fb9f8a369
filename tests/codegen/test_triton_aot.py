"""Ahead-of-time compile of every Triton kernel family for sm_90 and gfx942, on a machine
without a GPU.  One subprocess compiles everything (the test process runs the interpreter, whose
kernels cannot be compiled); each kernel must come back with non-empty GPU code, metadata, no
register spills and a block that fits the target."""

import json
import re
from pathlib import Path

import pytest

from ssmc.codegen.triton.aot import compile_family, compile_families
from ssmc.codegen.triton.families import FAMILIES
from ssmc.errors import SsmcError

TARGETS = ("sm_90", "gfx942")
GPU_CODE = {"sm_90": ("ptx", "cubin"), "gfx942": ("amdgcn", "hsaco")}
# (target, family) whose kernel spills scalar registers into vector-register lanes (not memory
# traffic; no VGPR spills): the 2-D SSM backward's ~50 scalar arguments on gfx942
SGPR_SPILLS = {("gfx942", "ssm2d.backward")}
# (family, target, dtype) -> the registers ptxas spills for the default config on targets
# other than sm_90 (the one the defaults were chosen for); a known issue to tune on such a
# device, and the test keeps them from growing.  Swept 2026-12-03 without a GPU: the SSD-mode
# backward compiles to a 64-72 register budget there whatever the warps or block (num_warps
# 2/4/8, block_d auto/4/8); for the 2-D SSM backward, configs spill-free on every NVIDIA target
# in the selective form (block_c 4, 8 warps) spilled 60 in the time-invariant form on sm_90.
KNOWN_SPILLS = {("ssd.backward", "sm_120", "fp32"): 12, ("ssd.backward", "sm_80", "bf16"): 32,
                ("ssd.backward", "sm_86", "bf16"): 24, ("ssd.backward", "sm_89", "bf16"): 24,
                ("ssm2d.backward", "sm_120", "bf16"): 40}


def _vgpr_spills(amdgcn: Path) -> int:
    return int(re.search(r"\.vgpr_spill_count:\s+(\d+)", amdgcn.read_text()).group(1))


# families whose compile is not cheap (the 2-D SSM backward: ~8 s for both targets): -m slow
SLOW = {"ssm2d.backward"}


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    """(target, family) -> its kernels; the default families in one subprocess, the SLOW ones
    in another when a test asks for one."""
    done = {}

    def kernels(target, family):
        slow = family in SLOW
        if slow not in done:
            fams = [f for f in FAMILIES if (f in SLOW) == slow]
            out = tmp_path_factory.mktemp("aot")
            done[slow] = compile_families(fams, list(TARGETS), dtype="fp16", out_dir=out)
        return [k for k in done[slow] if (k.target, k.family) == (target, family)]

    return kernels


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("family", [pytest.param(f, marks=[pytest.mark.slow] if f in SLOW else [])
                                    for f in FAMILIES])
def test_family_compiles(compiled, family, target):
    kernels = compiled(target, family)
    assert kernels, f"{family} produced no kernel for {target}"
    for k in kernels:
        for stage in ("source", "ttir", "ttgir", "llir") + GPU_CODE[target]:
            assert Path(k.files[stage]).stat().st_size > 0, (k.kernel, stage)
        assert f"def {k.kernel}(" in Path(k.files["source"]).read_text()
        meta = json.loads(Path(k.files["ttir"]).with_suffix(".json").read_text())
        assert meta["kernel"] == k.kernel and meta["n_regs"] == k.n_regs
        assert 0 < k.n_regs <= (255 if target == "sm_90" else 512)
        if (target, family) in SGPR_SPILLS:
            assert _vgpr_spills(Path(k.files["amdgcn"])) == 0, k.kernel
        else:
            assert k.n_spills == 0, f"{k.kernel} spills {k.n_spills} on {target}"
        assert k.fits


def test_chunked_family_has_three_launches(compiled):
    names = [k.kernel for k in compiled("sm_90", "selective_scan.chunked")]
    assert names == ["_selective_scan_recurrent_kernel", "_selective_scan_carry_kernel",
                     "_selective_scan_recurrent_kernel"]


def test_bad_requests_are_user_errors(tmp_path):
    with pytest.raises(SsmcError, match="does not compile Triton"):
        compile_family("ssd.chunked", "cpu", out_dir=tmp_path)
    with pytest.raises(SsmcError, match="did you mean 'ssd.chunked'"):
        compile_family("ssd.chunkd", "sm_90", out_dir=tmp_path)
    with pytest.raises(SsmcError, match="did you mean 'sm_90'"):
        compile_family("ssd.chunked", "sm90", out_dir=tmp_path)
    with pytest.raises(SsmcError, match="family s4d.vandermonde takes fp32"):
        compile_family("s4d.vandermonde", "sm_90", dtype="bf16", out_dir=tmp_path)
    with pytest.raises(SsmcError, match="family plrnn.backward takes fp32"):
        compile_family("plrnn.backward", "sm_90", dtype="fp64", out_dir=tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_every_target_and_dtype(tmp_path, dtype):
    from ssmc.targets import list_targets, load_target

    gpus = [t for t in list_targets() if load_target(t).is_gpu]
    kernels = compile_families(list(FAMILIES), gpus, dtype=dtype, out_dir=tmp_path)
    assert {k.target for k in kernels} == set(gpus)
    for k in kernels:
        assert k.fits, k
        if (k.target, k.family) in SGPR_SPILLS:
            assert _vgpr_spills(Path(k.files["amdgcn"])) == 0, k
        else:
            assert k.n_spills <= KNOWN_SPILLS.get((k.family, k.target, dtype), 0), k
