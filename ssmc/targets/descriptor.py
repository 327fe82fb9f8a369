"""Target descriptors: targets/<name>.yaml -> a frozen `Target`.

A descriptor holds what the cost model and the schedule checks need to know about a machine
(compute units, registers, shared memory, bandwidth, throughputs).  Each value's source is a
comment in its YAML file.  `units` is the SM count (NVIDIA), CU count (AMD) or core count (CPU).
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, fields
from functools import lru_cache

import yaml

from ssmc.errors import SsmcError, did_you_mean
from ssmc.paths import targets_dir

BACKENDS = ("tvm-llvm", "triton-cuda", "triton-hip")
DETECT = "detect"  # a YAML value the host detection fills in (cpu.yaml)


@dataclass(frozen=True)
class Target:
    name: str
    description: str
    backend: str  # tvm-llvm | triton-cuda | triton-hip
    arch: str  # sm_90, gfx942, x86_64
    units: int  # SMs / CUs / cores
    warp_size: int  # 32 (NVIDIA), 64 (AMD wavefront), 1 (CPU)
    clock_ghz: float
    l2_bytes: int
    mem_bandwidth_gbs: float
    fp32_tflops: float
    bf16_tflops: float
    exp_per_clk_per_unit: float  # special-function (exp2) results per clock per unit
    lanes_per_unit: int  # FP32 lanes per unit (CPU: vector lanes x FMA ports)
    step_latency_ns: float  # one dependent step of a scan loop (the cost model's latency bound)
    launch_overhead_us: float  # one kernel launch
    fft_efficiency: float = 1.0  # a library FFT's rate as a fraction of the kernels' (cost model)
    regs_per_thread: int | None = None  # GPU only
    regs_per_unit: int | None = None
    max_threads_per_unit: int | None = None
    smem_per_block: int | None = None  # bytes
    smem_per_unit: int | None = None
    vector_bits: int | None = None  # CPU only
    isa: tuple = ()
    llvm_mcpu: str | None = None

    def __post_init__(self):
        if self.backend not in BACKENDS:
            hint = did_you_mean(self.backend, BACKENDS)
            raise SsmcError(f"target {self.name}: backend {self.backend!r} is not one of "
                            f"{', '.join(BACKENDS)}" + (f" (did you mean '{hint}'?)" if hint
                                                        else ""))

    @property
    def is_gpu(self) -> bool:
        return self.backend.startswith("triton-")

    @property
    def cores(self) -> int:
        return self.units

    @property
    def sm_count(self) -> int:
        return self.units

    @property
    def exp_gops(self) -> float:
        """Special-function throughput, billions of exp per second."""
        return self.units * self.exp_per_clk_per_unit * self.clock_ghz

    @property
    def mem_bytes_per_s(self) -> float:
        return self.mem_bandwidth_gbs * 1e9

    def triton_target(self) -> tuple:
        """(backend, arch, warp_size) as triton's GPUTarget takes them: ("cuda", 90, 32) or
        ("hip", "gfx942", 64)."""
        if self.backend == "triton-cuda":
            return ("cuda", int(self.arch.removeprefix("sm_")), self.warp_size)
        if self.backend == "triton-hip":
            return ("hip", self.arch, self.warp_size)
        raise SsmcError(f"target {self.name}: backend {self.backend} does not run Triton")

    def fits(self, *, regs_per_thread: int, threads: int, smem_bytes: int) -> bool:
        """Whether one block of a compiled kernel fits on a unit at all."""
        if not self.is_gpu:
            return True
        return (regs_per_thread <= self.regs_per_thread
                and regs_per_thread * threads <= self.regs_per_unit
                and threads <= self.max_threads_per_unit
                and smem_bytes <= self.smem_per_block)


FIELD_NAMES = tuple(f.name for f in fields(Target))
REQUIRED_FIELDS = tuple(f.name for f in fields(Target) if f.default is MISSING)


def list_targets() -> list[str]:
    """Names of the shipped descriptors (targets/*.yaml), sorted."""
    return sorted(p.stem for p in targets_dir().glob("*.yaml"))


def load_target(name: str) -> Target:
    """The descriptor called `name`; `cpu` is completed from this host.  An unknown name is an
    SsmcError naming the closest known one."""
    if isinstance(name, Target):
        return name
    known = list_targets()
    if name not in known:
        hint = did_you_mean(name, known)
        raise SsmcError(f"unknown target {name!r}" + (f" (did you mean '{hint}'?)" if hint
                                                       else "")
                        + f"; known targets: {', '.join(known)}")
    return _load(name)


@lru_cache(maxsize=None)
def _load(name: str) -> Target:
    path = targets_dir() / f"{name}.yaml"
    raw = yaml.safe_load(path.read_text())
    if not isinstance(raw, dict):
        raise SsmcError(f"{path}: expected a mapping of fields")
    unknown = [k for k in raw if k not in FIELD_NAMES]
    if unknown:
        hint = did_you_mean(unknown[0], FIELD_NAMES)
        raise SsmcError(f"{path}: unknown field {unknown[0]!r}"
                        + (f" (did you mean '{hint}'?)" if hint else ""))
    if raw.get("name") != name:
        raise SsmcError(f"{path}: name {raw.get('name')!r} does not match the file name")
    if any(v == DETECT for v in raw.values()):
        from ssmc.targets.host import fill_detected

        raw = fill_detected(raw)
    if "isa" in raw:
        raw["isa"] = tuple(raw["isa"])
    missing = [f for f in REQUIRED_FIELDS if f not in raw]
    if missing:
        raise SsmcError(f"{path}: missing field {missing[0]!r}")
    return Target(**raw)
