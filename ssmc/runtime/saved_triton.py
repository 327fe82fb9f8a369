"""A saved model's compiled Triton kernels: kept with it, put back into Triton's own cache.

Triton compiles a JIT function per specialisation on first launch and keeps the result in its
cache (TRITON_CACHE_DIR, or a custom cache manager), one directory per compile hash: the
metadata .json, the IR stages and the binary (cubin / hsaco), listed by a `__grp__` file.
`CompiledModel.save` runs the model (ssmc.runtime.saveload.used_kernels) inside
common.record_launches(), takes every compiled specialisation of the JIT functions launched
(their `device_caches`), and copies each one's files into dir/triton/<hash>/, listed in the
manifest with their sha256.

`ssmc.load` puts them back through Triton's cache manager (`get_cache_manager(hash).put` /
`put_group`, atomic writes) where that hash is not cached yet.  The hash covers the source, the
specialisation, the options, the target and triton's own version, so a JIT launch on the
loading machine finds the entry (and compiles nothing) exactly when it would have compiled the
same kernel; an entry for another stack is simply never asked for.  A file that is missing or
does not match its hash is reported (SavedKernelWarning) and that kernel is left out.
"""

from __future__ import annotations

import hashlib
import re
import warnings
from pathlib import Path

TRITON = "triton"
# a compile hash (sha256 hex) and the file names Triton writes into its directory
_HASH = re.compile(r"[0-9a-f]{64}")
_FILE = re.compile(r"[A-Za-z0-9_.\-]{1,200}")


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def compiled_kernels(jit_functions) -> list:
    """Every compiled specialisation (triton CompiledKernel) of these JIT functions, on every
    device they ran on; interpreter objects (TRITON_INTERPRET=1) have none."""
    out = []
    for fn in jit_functions:
        for caches in getattr(fn, "device_caches", {}).values():
            out.extend(k for k in caches[0].values() if getattr(k, "metadata_group", None))
    return out


def save_triton(kernels, d: Path, write) -> dict:
    """Copy each compiled kernel's cache files into d/triton/<hash>/ (write(path, data, sha):
    the caller's atomic writer); the manifest entries {hash: {name, meta, files: {name: sha}}}."""
    entries = {}
    for k in kernels:
        if not _HASH.fullmatch(str(k.hash)):
            continue
        files = {}
        for name, path in sorted(k.metadata_group.items()):
            if not _FILE.fullmatch(name):
                continue
            try:
                data = Path(path).read_bytes()
            except OSError:
                files = None  # evicted from Triton's cache meanwhile: incomplete, skip it
                break
            files[name] = _sha(data)
            (d / TRITON / k.hash).mkdir(parents=True, exist_ok=True)
            write(d / TRITON / k.hash / name, data, files[name])
        meta = [n for n in (files or {}) if n.endswith(".json")]
        if files and len(meta) == 1:
            entries[k.hash] = {"name": k.name, "meta": meta[0], "files": files}
    return entries


def install_triton(d: Path, entries: dict, category) -> tuple[list, list]:
    """Put the saved kernels of `entries` into Triton's cache where they are not there yet;
    (installed hashes, hashes already cached).  A bad entry or file warns (`category`) and is
    left out (Triton compiles that kernel on first launch)."""
    from triton.runtime.cache import get_cache_manager

    installed, present = [], []
    for h, entry in sorted(entries.items()):
        problem, blobs = None, {}
        if not _HASH.fullmatch(str(h)) or not isinstance(entry, dict) \
                or not isinstance(entry.get("files"), dict) \
                or entry.get("meta") not in entry["files"] \
                or not all(_FILE.fullmatch(str(n)) for n in entry["files"]):
            problem = "is not a Triton kernel entry"
        else:
            for name, sha in entry["files"].items():
                try:
                    blobs[name] = (d / TRITON / h / name).read_bytes()
                except OSError as e:
                    problem = f"file {name} cannot be read ({e.strerror or e})"
                    break
                if _sha(blobs[name]) != sha:
                    problem = f"file {name} does not match its sha256 (a partial copy?)"
                    break
        if problem:
            warnings.warn(f"ssmc.load({str(d)!r}): saved Triton kernel {TRITON}/{h} {problem}: "
                          "not used; Triton compiles it on first launch", category, stacklevel=3)
            continue
        cache = get_cache_manager(h)
        if cache.get_group(entry["meta"]) is not None:
            present.append(h)
            continue
        # the files first, the group (what a lookup reads) last: a reader never sees half
        group = {name: cache.put(data, name, binary=True) for name, data in blobs.items()}
        cache.put_group(entry["meta"], group)
        installed.append(h)
    return installed, present
