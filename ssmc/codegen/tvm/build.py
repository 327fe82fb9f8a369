"""Compile TIR kernels with TVM, and keep them in an on-disk cache so a second process does not
compile again.

Cache key: kernel family, the kernel's static signature (its shape bucket: b and L are symbolic,
so one build serves every batch and length), dtype, the target's full description, the schedule
config, the ssmc version and a hash of the source of this package (so editing a builder
invalidates old kernels).  Entries are shared libraries exported by TVM (`export_library`) and
written atomically: a temporary file in the same directory, then `os.replace`, so concurrent
processes never see half a file.  The directory is `$SSMC_CACHE_DIR/tvm`, default
`~/.cache/ssmc/tvm`.

Read-only lookup directories (`KernelCache.add_lookup`: a saved model's kernels/, which
`ssmc.load` registers) are searched after the cache directory and before compiling; a file there
is loaded only when its sha256 is the one it was registered with.  `record_kernels()` collects
the kernels called inside a block (what `CompiledModel.save` copies next to the weights).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import tempfile
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import tvm

import ssmc
from ssmc.codegen.tvm.target import configure_thread_pool, target_key, target_kind

CACHE_ENV = "SSMC_CACHE_DIR"

# TVM passes to skip when compiling (none today).  Note for kernel writers: TVM 0.27's
# StmtSimplify substitutes every let-bound value into its uses, floats included, so deep
# chains of T.Bind temporaries grow exponentially; tirmath.Scratch exists for that reason.
# Disabling the simplifier instead was measured slower at run time (index expressions are
# then not simplified into vector ramps).
DISABLED_PASSES: tuple[str, ...] = ()


def cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "ssmc")


@functools.lru_cache(maxsize=None)
def source_hash(sources: tuple[str, ...] | None = None) -> str:
    """Hash of the backend's source: a changed builder or math library must not load a kernel
    compiled from the old code.  `sources`: the module files (names in this directory) a
    family is built from; None hashes every module here."""
    h = hashlib.sha256()
    here = Path(__file__).resolve().parent
    paths = sorted(here.glob("*.py")) if sources is None else [here / s for s in sorted(sources)]
    for path in paths:
        h.update(path.name.encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def cache_key(family: str, signature: dict, dtype: str, target, config: dict,
              sources: tuple[str, ...] | None = None) -> str:
    doc = {
        "family": family,
        "signature": signature,
        "dtype": dtype,
        "target": target_key(target),
        "config": config,
        "ssmc": ssmc.__version__,
        "source": source_hash(sources),
        "tvm": tvm.__version__,
    }
    text = json.dumps(doc, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


@dataclass
class CacheStats:
    compiled: int = 0     # built with tvm.compile in this process
    disk_hits: int = 0    # loaded from a .so written earlier (by any process)
    memory_hits: int = 0  # already loaded in this process
    saved_hits: int = 0   # loaded from a read-only lookup directory (a saved model's kernels/)


# Active record_kernels() blocks: each a {file name: Kernel} of the kernels called in it.
_RECORDERS: list[dict] = []


@contextlib.contextmanager
def record_kernels():
    """Collect every Kernel called inside the block (from any cache, through any memo):
    yields a dict {file name (<family>-<key>.so): Kernel}, filled as they run."""
    used: dict = {}
    _RECORDERS.append(used)
    try:
        yield used
    finally:
        _RECORDERS.remove(used)


@dataclass
class Kernel:
    """A loaded kernel: call it with tensors (DLPack, zero-copy)."""

    function: Any
    module: Any  # keeps the shared library alive
    key: str
    path: Path | None
    family: str | None = None

    def __call__(self, *args):
        if _RECORDERS:
            for used in _RECORDERS:
                used[self.file_name] = self
        return self.function(*args)

    @property
    def file_name(self) -> str:
        """<family>-<key>.so: the name of its file in the cache and in a saved model."""
        return self.path.name if self.path is not None else f"{self.family}-{self.key}.so"


@dataclass
class KernelCache:
    root: Path | None = None
    stats: CacheStats = field(default_factory=CacheStats)
    _loaded: dict = field(default_factory=dict)
    _memo: dict = field(default_factory=dict)
    _lock: Any = field(default_factory=threading.Lock)
    # read-only lookup directories: directory -> ({file name: sha256}, warning category)
    _lookup: dict = field(default_factory=dict)

    def directory(self) -> Path:
        return Path(self.root) if self.root is not None else cache_root() / "tvm"

    def add_lookup(self, directory, files: dict, warning: type = UserWarning) -> None:
        """Let get() load kernels from `directory` (read-only: nothing is written there) before
        compiling them: files {<family>-<key>.so: sha256}; a file is loaded only when its
        content has that hash, else it is skipped with a `warning` and the kernel is looked
        up further or compiled.  Registering a directory again replaces its files."""
        with self._lock:
            self._lookup[str(Path(directory).resolve())] = (dict(files), warning)

    def remove_lookup(self, directory) -> None:
        with self._lock:
            self._lookup.pop(str(Path(directory).resolve()), None)

    def lookup_dirs(self) -> list[Path]:
        return [Path(d) for d in self._lookup]

    def _from_lookup(self, name: str, func_name: str, key: str, family: str) -> Kernel | None:
        for directory, (files, category) in list(self._lookup.items()):
            sha = files.get(name)
            if sha is None:
                continue
            if not os.path.isdir(directory):  # the saved model was deleted: forget it quietly
                self._lookup.pop(directory, None)
                continue
            path = Path(directory) / name
            try:
                data = path.read_bytes()
            except OSError as e:
                warnings.warn(f"ssmc: saved kernel {path} cannot be read ({e}); compiling it "
                              "again", category, stacklevel=4)
                continue
            if hashlib.sha256(data).hexdigest() != sha:
                warnings.warn(f"ssmc: saved kernel {path} does not match its recorded sha256 "
                              "(changed or corrupted); not loaded, compiling it again",
                              category, stacklevel=4)
                continue
            try:
                mod = tvm.runtime.load_module(str(path))
                kernel = Kernel(mod[func_name], mod, key, path, family)
            except Exception as e:  # e.g. built for another machine's libraries
                warnings.warn(f"ssmc: saved kernel {path} does not load here ({e}); compiling "
                              "it again", category, stacklevel=4)
                continue
            self.stats.saved_hits += 1
            return kernel
        return None

    def get(self, family: str, func_name: str, signature: dict, dtype: str, target,
            config: dict, build: Callable[[], Any],
            sources: tuple[str, ...] | None = None) -> Kernel:
        """The kernel for this key: from memory, else from disk, else built by `build()` (which
        returns a PrimFunc), compiled for `target` and written to disk."""
        configure_thread_pool()
        key = cache_key(family, signature, dtype, target, config, sources)
        directory = self.directory()
        with self._lock:
            mem_key = (str(directory), key)
            if mem_key in self._loaded:
                self.stats.memory_hits += 1
                return self._loaded[mem_key]
            path = directory / f"{family}-{key}.so"
            if path.is_file():
                try:
                    mod = tvm.runtime.load_module(str(path))
                    kernel = Kernel(mod[func_name], mod, key, path, family)
                    self.stats.disk_hits += 1
                except Exception:  # a corrupt or foreign file: rebuild over it
                    kernel = None
            else:
                kernel = None
            if kernel is None and self._lookup:
                kernel = self._from_lookup(path.name, func_name, key, family)
            if kernel is None:
                kernel = self._compile_and_store(path, func_name, build, target, signature,
                                                 config, family, sources)
            self._loaded[mem_key] = kernel
            return kernel

    def _compile_and_store(self, path: Path, func_name, build, target, signature, config,
                           family, sources=None) -> Kernel:
        prim = build()
        ex = compile_module(prim, target, func_name)
        self.stats.compiled += 1
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{family}-", suffix=".so", dir=path.parent)
        os.close(fd)
        try:
            ex.export_library(tmp)
            _write_atomic(path.with_suffix(".json"), json.dumps(
                {"family": family, "signature": signature, "config": config,
                 "target": target_key(target), "ssmc": ssmc.__version__,
                 "source": source_hash(sources)}, indent=1, sort_keys=True, default=str))
            os.replace(tmp, path)
        except Exception:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        mod = tvm.runtime.load_module(str(path))
        return Kernel(mod[func_name], mod, path.stem.rsplit("-", 1)[1], path, family)

    def memoized(self, family: str, func_name: str, sig, config, build: Callable[[], Any],
                 target=None, sources: tuple[str, ...] | None = None) -> Kernel:
        """get() for a hot path: keyed first by the hashable (sig, config, target) tuple, so a
        call that found its kernel before hashes no JSON and builds no Path.  `sig` and
        `config` are frozen dataclasses with as_dict() or a __dict__."""
        target = target if target is not None else _host_target()
        fast_key = (family, sig, config, id(target), self.root, os.environ.get(CACHE_ENV))
        kernel = self._memo.get(fast_key)
        if kernel is None:
            kernel = self.get(family, func_name, _fields(sig), "float32", target,
                              config.as_dict(), build, sources=sources)
            self._memo[fast_key] = kernel
        return kernel

    def clear_memory(self) -> None:
        """Forget loaded kernels (the next get() goes to disk): what a new process would see."""
        with self._lock:
            self._loaded.clear()
            self._memo.clear()


def _fields(sig) -> dict:
    return sig.as_dict() if hasattr(sig, "as_dict") else dict(sig.__dict__)


def _host_target():
    from ssmc.codegen.tvm.target import host_target

    return host_target()


def _write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=".", suffix=".tmp", dir=path.parent)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


DEFAULT_CACHE = KernelCache()


def compile_module(prim, target, func_name: str):
    """tvm.compile of one PrimFunc (minus DISABLED_PASSES)."""
    with tvm.transform.PassContext(disabled_pass=list(DISABLED_PASSES)):
        return tvm.compile(tvm.IRModule({func_name: prim}), target=target)


def compile_source(prim, target, func_name: str) -> str:
    """Device source of a kernel (CUDA C for a cuda target); needs no GPU."""
    ex = compile_module(prim, target, func_name)
    mod = ex.mod
    if target_kind(target) == "llvm":
        return mod.inspect_source("ll")
    return mod.imports[0].inspect_source()
