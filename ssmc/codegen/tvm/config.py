"""Schedule knobs of the TVM selective-scan kernels, with defaults per target.

The algorithm (what is computed) lives in selective_scan_tir.py; a Config only says how it is
mapped onto the machine.  The tunable space is schedules/spaces/tvm_selective_scan.yaml; its
names are the field names here, so a tuner can do `Config(**trial_params)`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from ssmc.paths import schedules_dir

LAYOUTS = ("bld", "bdl")
SPACE_FILE = "spaces/tvm_selective_scan.yaml"


@dataclass(frozen=True)
class Config:
    """How one selective-scan kernel is scheduled.

    channel_block: channels one task carries through the whole sequence (CPU: a multiple of
        vector_width; CUDA: threads per CUDA block, one channel per thread).
    vector_width: lanes of one TIR vector op on CPU (8 = one AVX2 register of fp32); the
        channel block is covered by channel_block // vector_width interleaved vectors, which
        is what hides the latency of the exp polynomial.
    n_unroll: state dimension unroll factor; 0 = fully unrolled (the states then live in
        registers or fixed stack slots), otherwise the N loop is split and its inner part
        unrolled by this factor (smaller code for large N).
    threads: CPU tasks the batch x channel-block loop is cut into; 0 = one task per block and
        let TVM's pool share them out.  Ignored on CUDA.
    layout: the layout the kernel reads u/delta/z and writes y in: 'bld' (channels innermost,
        the fast one) or 'bdl' (mamba-ssm's; tiles of time_tile steps are transposed in
        registers inside the kernel).
    time_tile: steps per transposed tile for layout 'bdl' (ignored for 'bld').
    exp_degree: degree of the exp2 polynomial (4, 5, 6; see tirmath.py for the error).
    """

    channel_block: int = 16
    vector_width: int = 8
    n_unroll: int = 0
    threads: int = 0
    layout: str = "bld"
    time_tile: int = 16
    exp_degree: int = 5

    def __post_init__(self):
        if self.layout not in LAYOUTS:
            raise ValueError(f"Config.layout must be one of {LAYOUTS}, got {self.layout!r}")
        if self.channel_block < 1 or self.vector_width < 1:
            raise ValueError("Config.channel_block and vector_width must be >= 1")
        if self.exp_degree not in (4, 5, 6):
            raise ValueError(f"Config.exp_degree must be 4, 5 or 6, got {self.exp_degree}")
        if self.n_unroll < 0 or self.threads < 0 or self.time_tile < 1:
            raise ValueError("Config.n_unroll/threads must be >= 0 and time_tile >= 1")

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    def replace(self, **changes) -> "Config":
        return dataclasses.replace(self, **changes)


def default_config(target_kind: str = "llvm", lanes: int | None = None) -> Config:
    """Defaults measured on a 2-core Zen3 (AVX2): two interleaved 8-wide vectors per task."""
    if target_kind == "cuda":
        return Config(channel_block=128, vector_width=1, n_unroll=0, threads=0)
    if lanes is None:
        from ssmc.codegen.tvm.target import host_vector_lanes_f32

        lanes = host_vector_lanes_f32()
    return Config(channel_block=2 * lanes, vector_width=lanes)


def default_ssd_config(lanes: int | None = None) -> Config:
    """Mamba-2 SSD mode: the p x n state of a block does not fit in registers anyway, so wider
    blocks amortise the per-state broadcasts of B/C over more vectors.  Measured single-thread
    (b2 L1024 h8 p64 n64, AVX2): block 8 -> 12.9 ms, 16 -> 7.5 ms, 32 -> 6.3 ms, 64 -> 8.4 ms."""
    if lanes is None:
        from ssmc.codegen.tvm.target import host_vector_lanes_f32

        lanes = host_vector_lanes_f32()
    return Config(channel_block=4 * lanes, vector_width=lanes)


def legalize(config: Config, target_kind: str) -> Config:
    """Make a tuner's choice consistent: channel_block a multiple of vector_width on CPU."""
    if target_kind == "cuda":
        return config
    vw = config.vector_width
    cb = max(vw, (config.channel_block // vw) * vw)
    return config.replace(channel_block=cb)


def space_path() -> Path:
    return schedules_dir() / SPACE_FILE


def load_space(target_kind: str = "llvm") -> list[dict]:
    """The tunable knobs for a target kind as a list of {name, type, choices[, when]} dicts."""
    import yaml

    with open(space_path()) as fh:
        doc = yaml.safe_load(fh)
    return list(doc["cuda_knobs" if target_kind == "cuda" else "knobs"])
