"""Where a figure came from: the device, the software versions, the date, the machine's load.

Every benchmark record carries these, since a time means nothing without the machine it was
measured on.  Versions are read from package metadata so that the slow imports (tvm ~4 s,
triton) are not paid just to print a version.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
from importlib import metadata
from pathlib import Path

PACKAGES = ("ssmc", "torch", "apache-tvm", "triton", "numpy")


def git_commit() -> str | None:
    """The checkout's commit (with '+dirty' when files differ from it), when ssmc runs from one."""
    import subprocess

    root = Path(__file__).resolve().parents[2]
    if not (root / ".git").exists():
        return None
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--", "ssmc"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return (head + ("+dirty" if dirty else "")) or None


def versions() -> dict:
    out = {"python": platform.python_version(), "ssmc_git": git_commit()}
    for name in PACKAGES:
        key = "tvm" if name == "apache-tvm" else name
        try:
            out[key] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[key] = None
    return out


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") or line.startswith("Model"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average() -> list | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def device(torch_threads: int | None = None) -> dict:
    """The machine: CPU model, usable cores, torch's intra-op threads, GPU name if any, load."""
    import torch

    from ssmc.targets.host import usable_cores

    gpu = None
    if torch.cuda.is_available():
        gpu = torch.cuda.get_device_name(0)
    return {"cpu_model": cpu_model(), "cores": usable_cores(), "machine": platform.machine(),
            "torch_threads": torch_threads or torch.get_num_threads(),
            "tvm_num_threads": os.environ.get("TVM_NUM_THREADS"), "gpu": gpu,
            "load_average": load_average()}


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
