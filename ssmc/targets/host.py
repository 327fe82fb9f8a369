"""What this machine is: CPU ISA, cores and caches from /proc and /sys, the GPU through torch.

Used twice: to complete targets/cpu.yaml (fields set to `detect`) and by `detect_host()`,
which picks the descriptor the compiler should target when none is named.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import re
from functools import lru_cache
from pathlib import Path

# /proc/cpuinfo flags that change what the LLVM backend may emit.
CODEGEN_FLAGS = (
    "sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512dq", "avx512bw", "avx512vl",
    "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16",  # x86
    "asimd", "asimdhp", "fphp", "sve", "sve2", "bf16", "i8mm",  # aarch64 (Features line)
)
ASSUMED_CLOCK_GHZ = 3.0
FMA_PORTS = 2  # assumed: two FMA pipes per core (Zen 3/4, Skylake-SP, Neoverse V1)
EXP_OPS = 10  # assumed: a vectorised polynomial exp costs ~10 FMA-class operations
STEP_CYCLES = 20  # assumed: cycles per dependent scan step, the exp overlapped across channels


@lru_cache(maxsize=None)
def _cpuinfo() -> dict:
    """The first processor's block of /proc/cpuinfo as key -> value ({} when unreadable)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    info = {}
    for line in text.split("\n\n")[0].splitlines():
        key, _, value = line.partition(":")
        info[key.strip()] = value.strip()
    return info


def cpu_flags() -> frozenset:
    info = _cpuinfo()
    return frozenset((info.get("flags") or info.get("Features") or "").split())


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def vector_bits(flags=None, machine: str | None = None) -> int:
    flags = cpu_flags() if flags is None else flags
    machine = machine or platform.machine()
    if "avx512f" in flags:
        return 512
    if "avx2" in flags or "avx" in flags:
        return 256
    return 128  # SSE2 is baseline x86-64; NEON/ASIMD is 128 bits (SVE length is not in cpuinfo)


def llvm_mcpu(info: dict | None = None, flags=None, machine: str | None = None) -> str:
    """LLVM's -mcpu for this CPU: exact for AMD Zen families, by feature level otherwise."""
    info = _cpuinfo() if info is None else info
    flags = cpu_flags() if flags is None else flags
    machine = machine or platform.machine()
    if machine not in ("x86_64", "AMD64"):
        return "generic"
    family = int(info.get("cpu family", "0") or 0)
    model = int(info.get("model", "0") or 0)
    if info.get("vendor_id") == "AuthenticAMD":
        if family == 0x17:
            return "znver2" if model >= 0x30 else "znver1"
        if family == 0x19:
            zen4 = 0x10 <= model <= 0x1F or 0x60 <= model <= 0x7F or 0xA0 <= model <= 0xAF
            return "znver4" if zen4 else "znver3"
        if family >= 0x1A:
            return "znver5"
    if "amx_tile" in flags or "avx512_fp16" in flags:
        return "sapphirerapids"
    if "avx512_vnni" in flags:
        return "cascadelake"
    if "avx512f" in flags:
        return "skylake-avx512"
    if "avx2" in flags:
        return "haswell"
    return "x86-64"


def cpu_clock_ghz() -> float:
    """Maximum clock from cpufreq, else the highest 'cpu MHz' in /proc/cpuinfo, else 3.0."""
    try:
        khz = int(Path("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq").read_text())
        return khz / 1e6
    except (OSError, ValueError):
        pass
    try:
        mhz = [float(m) for m in re.findall(r"cpu MHz\s*:\s*([\d.]+)",
                                             Path("/proc/cpuinfo").read_text())]
        if mhz and max(mhz) > 0:
            return max(mhz) / 1e3
    except OSError:
        pass
    return ASSUMED_CLOCK_GHZ


def _parse_size(text: str) -> int:
    m = re.fullmatch(r"(\d+)\s*([KMG]?)B?", text.strip(), re.IGNORECASE)
    if not m:
        return 0
    return int(m.group(1)) * {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}[m.group(2).upper()]


def cpu_l2_bytes() -> int:
    """Per-core unified L2 from sysfs; 1 MB assumed when unreadable."""
    for index in sorted(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*")):
        try:
            if (index / "level").read_text().strip() == "2":
                size = _parse_size((index / "size").read_text())
                if size:
                    return size
        except OSError:
            continue
    return 1 << 20


def fill_detected(raw: dict) -> dict:
    """Replace the `detect` values of a descriptor (cpu.yaml) with this host's."""
    flags = cpu_flags()
    cores = usable_cores()
    bits = vector_bits(flags)
    clock = cpu_clock_ghz()
    lanes = bits // 32
    fp32 = cores * clock * lanes * 2 * FMA_PORTS / 1e3
    detected = {
        "arch": platform.machine() or "unknown",
        "units": cores,
        "vector_bits": bits,
        "isa": tuple(f for f in CODEGEN_FLAGS if f in flags),
        "llvm_mcpu": llvm_mcpu(flags=flags),
        "clock_ghz": round(clock, 3),
        "l2_bytes": cpu_l2_bytes(),
        "fp32_tflops": round(fp32, 4),
        "bf16_tflops": round(fp32 * (2 if "avx512_bf16" in flags else 1), 4),
        "exp_per_clk_per_unit": lanes * FMA_PORTS / EXP_OPS,
        "lanes_per_unit": lanes * FMA_PORTS,
        "step_latency_ns": round(STEP_CYCLES / clock, 3),
    }
    return {k: (detected[k] if v == "detect" else v) for k, v in raw.items()}


def _gpu_arch() -> tuple[str, str, object] | None:
    """(backend, arch, device properties) of CUDA/ROCm device 0, or None."""
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    props = torch.cuda.get_device_properties(0)
    if getattr(torch.version, "hip", None):
        return "triton-hip", str(getattr(props, "gcnArchName", "gfx")).split(":")[0], props
    return "triton-cuda", f"sm_{props.major}{props.minor}", props


def _arch_number(arch: str) -> int:
    digits = re.sub(r"\D", "", arch)
    return int(digits) if digits else 0


def detect_host():
    """The target for this machine: its GPU's descriptor (with the real device's SM count, L2
    and name) when torch sees a CUDA/ROCm device, else the cpu descriptor.  A GPU arch without a
    descriptor borrows the nearest one of the same backend (preferring an older arch)."""
    from ssmc.targets.descriptor import list_targets, load_target

    found = _gpu_arch()
    if found is None:
        return load_target("cpu")
    backend, arch, props = found
    same_backend = [load_target(n) for n in list_targets()]
    same_backend = [t for t in same_backend if t.backend == backend]
    if not same_backend:
        return load_target("cpu")
    exact = [t for t in same_backend if t.arch == arch]
    if exact:
        base = exact[0]
    else:
        want = _arch_number(arch)
        base = min(same_backend, key=lambda t: (_arch_number(t.arch) > want,
                                                abs(_arch_number(t.arch) - want)))
    changes = {"name": arch, "arch": arch,
               "units": int(getattr(props, "multi_processor_count", base.units)),
               "description": f"{props.name} (detected; other figures from {base.name}.yaml)"}
    l2 = int(getattr(props, "L2_cache_size", 0) or 0)
    if l2:
        changes["l2_bytes"] = l2
    return dataclasses.replace(base, **changes)
