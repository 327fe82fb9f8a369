"""Target descriptors: every shipped YAML loads and is self-consistent; names are checked;
the host is detected."""

import dataclasses
import re

import pytest
import yaml

from ssmc.errors import SsmcError
from ssmc.paths import targets_dir
from ssmc.targets import BACKENDS, Target, detect_host, list_targets, load_target
from ssmc.targets import host

EXPECTED = {"cpu", "sm_80", "sm_86", "sm_89", "sm_90", "sm_100", "sm_120", "gfx942"}


def test_every_expected_target_ships():
    assert EXPECTED <= set(list_targets())


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_descriptor_loads_and_is_consistent(name):
    t = load_target(name)
    assert isinstance(t, Target) and t.name == name and t.backend in BACKENDS
    assert t.units > 0 and t.clock_ghz > 0 and t.l2_bytes > 0
    assert t.mem_bandwidth_gbs > 0 and t.fp32_tflops > 0 and t.bf16_tflops >= t.fp32_tflops / 2
    assert t.exp_gops > 0 and t.lanes_per_unit > 0 and t.step_latency_ns > 0
    with pytest.raises(dataclasses.FrozenInstanceError):
        t.units = 1
    if t.is_gpu:
        assert t.warp_size in (32, 64)
        assert t.regs_per_thread * 32 <= t.regs_per_unit
        assert t.smem_per_block <= t.smem_per_unit
        # The FP32 peak is units x lanes x 2 (FMA) x clock, within 10% (boost clocks vary).
        peak = t.units * t.lanes_per_unit * 2 * t.clock_ghz / 1e3
        assert peak == pytest.approx(t.fp32_tflops, rel=0.1)
    else:
        assert t.vector_bits in (128, 256, 512) and t.llvm_mcpu


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_value_names_its_source(name):
    """Each field of the YAML carries a comment: a source or the word assumed/detected."""
    lines = (targets_dir() / f"{name}.yaml").read_text().splitlines()
    fields = [ln for ln in lines if re.match(r"^[a-z_0-9]+:", ln)]
    for line in fields:
        key = line.split(":")[0]
        if key in ("name", "description", "backend", "arch") and "detect" not in line:
            continue
        assert "#" in line, f"{name}.yaml: {key} has no source comment"


def test_triton_targets():
    assert load_target("sm_90").triton_target() == ("cuda", 90, 32)
    assert load_target("sm_120").triton_target() == ("cuda", 120, 32)
    assert load_target("gfx942").triton_target() == ("hip", "gfx942", 64)
    with pytest.raises(SsmcError, match="does not run Triton"):
        load_target("cpu").triton_target()


def test_unknown_name_suggests_the_closest():
    with pytest.raises(SsmcError, match=r"unknown target 'sm90' \(did you mean 'sm_90'\?\)"):
        load_target("sm90")
    with pytest.raises(SsmcError, match="known targets: cpu"):
        load_target("tpu_v5")


def test_bad_descriptor_fields_are_reported(tmp_path, monkeypatch):
    good = yaml.safe_load((targets_dir() / "sm_90.yaml").read_text())
    import ssmc.targets.descriptor as descriptor

    monkeypatch.setattr(descriptor, "targets_dir", lambda: tmp_path)
    descriptor._load.cache_clear()
    try:
        (tmp_path / "sm_x.yaml").write_text(yaml.safe_dump({**good, "name": "sm_x",
                                                            "warpsize": 32}))
        with pytest.raises(SsmcError, match="unknown field 'warpsize' .did you mean 'warp_size'"):
            load_target("sm_x")
        bad = {k: v for k, v in good.items() if k != "units"}
        (tmp_path / "sm_y.yaml").write_text(yaml.safe_dump({**bad, "name": "sm_y"}))
        with pytest.raises(SsmcError, match="missing field 'units'"):
            load_target("sm_y")
        (tmp_path / "sm_z.yaml").write_text(yaml.safe_dump({**good, "name": "sm_z",
                                                            "backend": "triton-cud"}))
        with pytest.raises(SsmcError, match="did you mean 'triton-cuda'"):
            load_target("sm_z")
    finally:
        descriptor._load.cache_clear()


def test_cpu_is_completed_from_the_host():
    cpu = load_target("cpu")
    assert cpu.units == host.usable_cores()
    assert cpu.vector_bits == host.vector_bits()
    assert "detect" not in dataclasses.asdict(cpu).values()


def test_fits_checks_registers_threads_and_shared_memory():
    h100 = load_target("sm_90")
    assert h100.fits(regs_per_thread=128, threads=256, smem_bytes=100_000)
    assert not h100.fits(regs_per_thread=255, threads=1024, smem_bytes=0)  # 261k registers
    assert not h100.fits(regs_per_thread=32, threads=128, smem_bytes=240_000)


@pytest.mark.parametrize("flags, bits", [({"avx512f", "avx2"}, 512), ({"avx2"}, 256),
                                          ({"sse2"}, 128), ({"asimd"}, 128)])
def test_vector_width_from_flags(flags, bits):
    assert host.vector_bits(flags) == bits


@pytest.mark.parametrize("vendor, family, model, flags, mcpu", [
    ("AuthenticAMD", 25, 0x01, {"avx2"}, "znver3"),
    ("AuthenticAMD", 25, 0x11, {"avx512f"}, "znver4"),
    ("AuthenticAMD", 23, 0x31, {"avx2"}, "znver2"),
    ("GenuineIntel", 6, 0x8F, {"avx512f", "amx_tile"}, "sapphirerapids"),
    ("GenuineIntel", 6, 0x55, {"avx512f"}, "skylake-avx512"),
    ("GenuineIntel", 6, 0x3C, {"avx2"}, "haswell"),
])
def test_llvm_mcpu_from_cpuinfo(vendor, family, model, flags, mcpu):
    info = {"vendor_id": vendor, "cpu family": str(family), "model": str(model)}
    assert host.llvm_mcpu(info, flags, "x86_64") == mcpu


def test_detect_host_without_a_gpu_is_the_cpu(monkeypatch):
    monkeypatch.setattr(host, "_gpu_arch", lambda: None)
    assert detect_host().name == "cpu"


def test_detect_host_with_a_gpu_uses_the_device(monkeypatch):
    class Props:
        name = "NVIDIA H100 PCIe"
        multi_processor_count = 114
        L2_cache_size = 50 * 2**20

    monkeypatch.setattr(host, "_gpu_arch", lambda: ("triton-cuda", "sm_90", Props()))
    t = detect_host()
    assert (t.name, t.units, t.backend) == ("sm_90", 114, "triton-cuda")
    assert "H100 PCIe" in t.description
    # an arch without a descriptor borrows the nearest older one of its backend
    monkeypatch.setattr(host, "_gpu_arch", lambda: ("triton-cuda", "sm_87", Props()))
    t = detect_host()
    assert t.name == "sm_87" and t.regs_per_unit == load_target("sm_86").regs_per_unit
