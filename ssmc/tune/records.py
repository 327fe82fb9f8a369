"""Tuned records: the best (algorithm, config) found for a kernel family at a shape bucket.

A record is one JSON file named by its key (kernel family, shape bucket, dtype), so writers
never read-modify-write a shared file: two workers finishing the same study replace the same
file atomically (a temporary file in the same directory, then os.replace) and readers never see
half a file.  The versions it was measured with (ssmc, torch, tvm or triton) are inside it: a
record made with other versions is ignored, not trusted.

Where they live, first match wins:
    user:     $SSMC_RECORDS_DIR/<target>/  (default ~/.cache/ssmc/records/<target>/)
    shipped:  schedules/<target>/          (`ssmc tune --export schedules` writes there)

This module imports neither optuna nor a kernel backend: the compiler reads records on every
compile.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from importlib import metadata
from pathlib import Path

from ssmc.paths import schedules_dir

FORMAT = 1
RECORDS_ENV = "SSMC_RECORDS_DIR"
CACHE_ENV = "SSMC_CACHE_DIR"  # the root of every ssmc cache (TVM kernels, studies, records)
SOURCES = ("measured", "model")


def cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "ssmc")


def user_records_root() -> Path:
    return Path(os.environ.get(RECORDS_ENV) or cache_root() / "records")


def seqlen_bucket(seqlen: int) -> int:
    """The power of two at or above seqlen: lengths in (512, 1024] share the 1024 record."""
    return 1 << max(0, int(seqlen) - 1).bit_length()


@dataclass(frozen=True)
class RecordKey:
    family: str  # node family as the passes name it: selective_ssm/mamba1
    batch: int
    seqlen: int  # bucketed
    channels: int
    d_state: int
    dtype: str = "float32"

    @classmethod
    def of(cls, family, *, batch, seqlen, channels, d_state, dtype="float32") -> "RecordKey":
        return cls(family, int(batch), seqlen_bucket(seqlen), int(channels), int(d_state),
                   str(dtype))

    @property
    def bucket(self) -> dict:
        return {"batch": self.batch, "seqlen": self.seqlen, "channels": self.channels,
                "d_state": self.d_state}

    def filename(self) -> str:
        fam = self.family.replace("/", ".")
        return (f"{fam}-b{self.batch}-l{self.seqlen}-c{self.channels}-n{self.d_state}-"
                f"{self.dtype}.json")

    def describe(self) -> str:
        return (f"{self.family} b={self.batch} L<={self.seqlen} d={self.channels} "
                f"N={self.d_state} {self.dtype}")


def key_for_node(family: str, node, graph, bindings: dict, dtype: str) -> RecordKey:
    """The key of an SSM node in a graph at the shape bucket `bindings`."""
    from ssmc.passes.rewrite import concrete

    x = node.inputs.get("x") or node.inputs.get("u") or node.inputs.get("s")
    shape = concrete(graph, x, bindings)
    return RecordKey.of(family, batch=shape[0], seqlen=shape[1], channels=shape[-1],
                        d_state=getattr(node, "d_state", None) or 0, dtype=dtype)


def _dist_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "absent"


@lru_cache(maxsize=None)
def versions_for(backend: str) -> dict:
    """What a record's timings depend on besides the machine; read from the installed
    distributions, so that looking a record up never imports torch's kernels, TVM or Triton."""
    import ssmc

    kernel_lib = ("tvm", "apache-tvm") if backend.startswith("tvm") else ("triton", "triton")
    return {"ssmc": ssmc.__version__, "torch": _dist_version("torch"),
            kernel_lib[0]: _dist_version(kernel_lib[1])}


def write_atomic(path: Path, text: str) -> None:
    """Write a file so that readers see the old or the new content, never a part."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it private; a record is for every reader
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def make_record(key: RecordKey, target, *, algorithm: str, config: dict, source: str,
                **extra) -> dict:
    if source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
    rec = {"format": FORMAT, "target": target.name, "family": key.family, "bucket": key.bucket,
           "dtype": key.dtype, "versions": versions_for(target.backend),
           "algorithm": algorithm, "config": dict(config), "source": source}
    rec.update(extra)
    return rec


class Records:
    """The records of one target: `lookup` is what the select_algorithm and schedule passes
    call; `write` stores a new one in the user directory (or any directory given)."""

    def __init__(self, target, directories=None):
        self.target = target
        self.backend = getattr(target, "backend", "tvm-llvm")
        name = getattr(target, "name", target)
        self.directories = [Path(d) for d in directories] if directories is not None else [
            user_records_root() / name, schedules_dir() / name]

    def __repr__(self) -> str:
        return f"Records({', '.join(map(str, self.directories))})"

    def find(self, key: RecordKey) -> dict | None:
        """The first usable record for the key: right format and key, versions equal to ours."""
        want = versions_for(self.backend)
        for directory in self.directories:
            path = directory / key.filename()
            try:
                rec = json.loads(path.read_text())
            except (OSError, ValueError):  # absent, or not JSON: nothing to trust here
                continue
            if (isinstance(rec, dict) and rec.get("format") == FORMAT
                    and rec.get("family") == key.family and rec.get("bucket") == key.bucket
                    and rec.get("dtype") == key.dtype and rec.get("versions") == want
                    and rec.get("source") in SOURCES and isinstance(rec.get("config"), dict)):
                rec["path"] = str(path)
                return rec
        return None

    def lookup(self, family: str, node, graph, ctx) -> dict | None:
        key = key_for_node(family, node, graph, ctx.bindings, ctx.dtype)
        return self.find(key)

    def write(self, record: dict, directory=None) -> Path:
        key = RecordKey(record["family"], **record["bucket"], dtype=record["dtype"])
        directory = Path(directory) if directory is not None else self.directories[0]
        path = directory / key.filename()
        body = {k: v for k, v in record.items() if k != "path"}
        write_atomic(path, json.dumps(body, indent=1, sort_keys=True) + "\n")
        return path


def default_records(target) -> Records:
    """The records the compiler uses for `target` when the caller passes none."""
    return Records(target)


__all__ = ["RecordKey", "Records", "default_records", "key_for_node", "make_record",
           "seqlen_bucket", "user_records_root", "versions_for", "write_atomic"]
