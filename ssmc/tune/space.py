"""Search spaces: schedules/spaces/*.yaml -> Optuna suggestions.

A space file describes one kernel (one algorithm on one backend):

    family: selective_scan.chunked          # the kernel family (Triton: aot.compile_family's)
    config: ssmc.codegen...ChunkedScanConfig
    knobs:
      - {name: chunk, type: int, choices: [32, 64, 128]}
      - {name: time_tile, type: int, choices: [8, 16], when: {layout: bdl}}
      - {name: scale, type: float, low: 0.5, high: 2.0, log: true}

A node family on a backend may run several algorithms, each with its own kernel and knobs.  The
tuner then searches the algorithm too (a categorical `algorithm` parameter) and every knob is
conditional on it: it is suggested as `<algorithm>.<knob>` only in trials that picked that
algorithm, which is how Optuna expresses conditional parameters (a name always has one
distribution).  A knob with `when` is conditional on other knobs of the same kernel.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ssmc.errors import SsmcError
from ssmc.paths import schedules_dir

# (node family, algorithm, backend) -> the space file of the kernel that runs it.  The kernels
# themselves are listed in ssmc.runtime.dispatch.KERNELS (the glue ones in
# ssmc.passes.schedule.GLUE_KERNELS); a kernel without a space file here is run with its
# defaults and not tuned.
SPACE_FILES = {
    ("selective_ssm/mamba1", "sequential", "tvm"): "tvm_selective_scan.yaml",
    ("selective_ssm/mamba1", "sequential", "triton"): "triton_selective_scan_sequential.yaml",
    ("selective_ssm/mamba1", "associative", "triton"): "triton_selective_scan_associative.yaml",
    ("selective_ssm/mamba1", "chunked", "triton"): "triton_selective_scan_chunked.yaml",
    ("selective_ssm/ssd", "chunked", "triton"): "triton_ssd_chunked.yaml",
    ("selective_ssm/ssd", "sequential", "tvm"): "tvm_ssd.yaml",
    ("diagonal_ssm", "sequential", "triton"): "triton_s4d_recurrent.yaml",
    ("diagonal_ssm", "fft", "triton"): "triton_s4d_vandermonde.yaml",
    # issue 10's families, run by their executors (ssmc.tune.workload.EXECUTOR_RUN)
    ("ssm2d", "wavefront", "tvm"): "tvm_ssm2d.yaml",
    ("ssm2d", "sequential", "tvm"): "tvm_ssm2d.yaml",
    ("recurrence", "sequential", "tvm"): "tvm_plrnn.yaml",
    ("diagonal_ssm", "sequential", "tvm"): "tvm_diagonal_scan.yaml",
    ("diagonal_ssm", "fft", "tvm"): "tvm_diagonal_fft.yaml",  # no knobs: the algorithm only
    ("ssm2d", "wavefront", "triton"): "triton_ssm2d_wavefront.yaml",
    ("recurrence", "sequential", "triton"): "triton_plrnn_sequential.yaml",
    ("selective_ssm/dense", "sequential", "triton"): "triton_dense_sequential.yaml",
    # glue kernels (the 'algorithm' is the kernel's name: ssmc.passes.schedule.GLUE_KERNELS)
    ("conv1d", "window", "tvm"): "tvm_causal_conv1d.yaml",
    ("rmsnorm", "rowwise", "tvm"): "tvm_rmsnorm.yaml",
}
TYPES = ("int", "float", "str", "bool")


@dataclass(frozen=True)
class Knob:
    name: str
    type: str
    choices: tuple | None = None
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    when: dict = field(default_factory=dict)

    def applies(self, chosen: dict) -> bool:
        """Whether this knob exists given the knobs already chosen (its `when` condition)."""
        return all(chosen.get(k) == v for k, v in self.when.items())

    def suggest(self, trial, param_name: str):
        if self.choices is not None:
            return trial.suggest_categorical(param_name, list(self.choices))
        if self.type == "int":
            return trial.suggest_int(param_name, int(self.low), int(self.high),
                                     step=int(self.step or 1), log=self.log)
        return trial.suggest_float(param_name, float(self.low), float(self.high),
                                   step=self.step, log=self.log)

    def contains(self, value) -> bool:
        if self.choices is not None:
            return value in self.choices
        return isinstance(value, (int, float)) and self.low <= value <= self.high


@dataclass(frozen=True)
class KernelSpace:
    """The knobs of one kernel, from one space file."""

    path: Path
    family: str
    config: str
    knobs: tuple

    @property
    def names(self) -> tuple:
        return tuple(k.name for k in self.knobs)


def _knob(raw, path: Path, index: int) -> Knob:
    where = f"{path.name}: knobs[{index}]"
    if not isinstance(raw, dict) or "name" not in raw:
        raise SsmcError(f"{where}: expected a mapping with a name")
    kind = raw.get("type", "int")
    if kind not in TYPES:
        raise SsmcError(f"{where} ({raw['name']}): type {kind!r} is not one of {', '.join(TYPES)}")
    unknown = set(raw) - {"name", "type", "choices", "low", "high", "log", "step", "when"}
    if unknown:
        raise SsmcError(f"{where} ({raw['name']}): unknown key {sorted(unknown)[0]!r}")
    if "choices" in raw:
        if not isinstance(raw["choices"], list) or not raw["choices"]:
            raise SsmcError(f"{where} ({raw['name']}): choices must be a non-empty list")
        return Knob(raw["name"], kind, choices=tuple(raw["choices"]), when=dict(raw.get("when") or {}))
    if "low" not in raw or "high" not in raw or raw["low"] > raw["high"]:
        raise SsmcError(f"{where} ({raw['name']}): needs choices, or low <= high")
    return Knob(raw["name"], kind, low=raw["low"], high=raw["high"], log=bool(raw.get("log")),
                step=raw.get("step"), when=dict(raw.get("when") or {}))


def load_kernel_space(path) -> KernelSpace:
    path = Path(path)
    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise SsmcError(f"{path}: cannot read the search space: {e}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("knobs"), list):
        raise SsmcError(f"{path}: expected a mapping with a `knobs` list")
    knobs = tuple(_knob(raw, path, i) for i, raw in enumerate(doc["knobs"]))
    names = [k.name for k in knobs]
    for k in knobs:
        for dep in k.when:
            if dep not in names or names.index(dep) > names.index(k.name):
                raise SsmcError(f"{path.name}: knob {k.name}: `when` names {dep!r}, which must "
                                "be a knob listed before it")
    return KernelSpace(path, str(doc.get("family", path.stem)), str(doc.get("config", "")), knobs)


def load_all_spaces(directory=None) -> dict:
    """Every space file of a directory (default schedules/spaces/), by file name."""
    directory = Path(directory) if directory is not None else schedules_dir() / "spaces"
    return {p.name: load_kernel_space(p) for p in sorted(directory.glob("*.yaml"))}


@dataclass(frozen=True)
class NodeSpace:
    """What may be tuned for one node family on one backend: the valid algorithms, each with the
    knobs of its kernel."""

    family: str
    backend: str  # tvm | triton
    kernels: dict  # algorithm -> KernelSpace (insertion order = preference order)

    @property
    def algorithms(self) -> tuple:
        return tuple(self.kernels)

    def param_name(self, algorithm: str, knob: str) -> str:
        return knob if len(self.kernels) == 1 else f"{algorithm}.{knob}"

    def suggest(self, trial) -> tuple[str, dict]:
        """(algorithm, config) for an Optuna trial; only the knobs that exist for that choice
        are suggested."""
        algs = self.algorithms
        alg = trial.suggest_categorical("algorithm", list(algs)) if len(algs) > 1 else algs[0]
        config: dict = {}
        for knob in self.kernels[alg].knobs:
            if knob.applies(config):
                config[knob.name] = knob.suggest(trial, self.param_name(alg, knob.name))
        return alg, config

    def params_of(self, algorithm: str, config: dict) -> dict | None:
        """The trial parameters that stand for (algorithm, config), for enqueueing a known
        config (the default) as a trial; None when it lies outside the space."""
        if algorithm not in self.kernels:
            return None
        params = {"algorithm": algorithm} if len(self.kernels) > 1 else {}
        chosen: dict = {}
        for knob in self.kernels[algorithm].knobs:
            if not knob.applies(chosen):
                continue
            value = config.get(knob.name)
            if not knob.contains(value):
                return None
            chosen[knob.name] = value
            params[self.param_name(algorithm, knob.name)] = value
        return params

    def config_of(self, params: dict) -> tuple[str, dict]:
        """Inverse of params_of: a finished trial's params -> (algorithm, config)."""
        alg = params.get("algorithm", self.algorithms[0])
        config = {}
        for knob in self.kernels[alg].knobs:
            name = self.param_name(alg, knob.name)
            if name in params:
                config[knob.name] = params[name]
        return alg, config


def node_space(family: str, algorithms, backend: str, directory=None) -> NodeSpace | None:
    """The space of a node family on a backend over the given (valid) algorithms; None when no
    algorithm has a tunable kernel there."""
    directory = Path(directory) if directory is not None else schedules_dir() / "spaces"
    kernels = {}
    for alg in algorithms:
        name = SPACE_FILES.get((family, alg, backend))
        if name is not None and (directory / name).is_file():
            kernels[alg] = load_kernel_space(directory / name)
    return NodeSpace(family, backend, kernels) if kernels else None


__all__ = ["Knob", "KernelSpace", "NodeSpace", "SPACE_FILES", "load_all_spaces",
           "load_kernel_space", "node_space"]
