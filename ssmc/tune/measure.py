"""Timing kernels on this machine.

Every measurement: warm-up calls first (the first call compiles or loads the kernel and faults
its pages in), then repeats each preceded by a cache flush (so one config does not inherit
another's warm cache), and the median of the repeats as the figure; the interquartile mean is
kept too.  Both ignore the slow tail that a machine shared with other work produces (a repeat
that lost its core for a while) and the rare fast outlier.

CPU: time.perf_counter around the call (the TVM kernels are synchronous); the flush writes a
buffer twice the last-level cache.  CUDA: CUDA events around the call on the current stream,
the flush zeroes a buffer twice the L2.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch


@dataclass
class Timing:
    samples: list = field(default_factory=list)  # seconds, in the order measured

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def iq_mean(self) -> float:
        """Mean of the middle half: drops the top and the bottom quartile."""
        s = sorted(self.samples)
        q = len(s) // 4
        mid = s[q:len(s) - q] or s
        return sum(mid) / len(mid)

    @property
    def best(self) -> float:
        return min(self.samples)

    def statistic(self, name: str) -> float:
        """median (the default), iq_mean, or min.  On a machine shared with other work the noise
        only ever adds time, so min is then the steadiest estimate of the kernel's own time."""
        return {"median": self.median, "iq_mean": self.iq_mean, "min": self.best}[name]

    def summary(self) -> str:
        return (f"median {self.median * 1e3:.3f} ms (iq-mean {self.iq_mean * 1e3:.3f}, "
                f"min {self.best * 1e3:.3f}, n={len(self.samples)})")


def last_level_cache_bytes() -> int:
    """The largest CPU cache from sysfs (L3 on most machines); 32 MiB when unreadable."""
    from ssmc.targets.host import _parse_size

    sizes = []
    for index in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"):
        try:
            sizes.append(_parse_size((index / "size").read_text()))
        except OSError:
            continue
    return max(sizes, default=0) or (32 << 20)


class CacheFlusher:
    """Evicts caches between repeats by writing a buffer larger than them."""

    def __init__(self, device: str = "cpu", nbytes: int | None = None):
        self.device = device
        if nbytes is None:
            if device == "cuda":
                nbytes = 2 * torch.cuda.get_device_properties(0).L2_cache_size
            else:
                nbytes = 2 * last_level_cache_bytes()
        n = max(nbytes, 1 << 20) // 4
        if device == "cuda":
            self.buffer = torch.empty(n, dtype=torch.float32, device=device)
        else:
            # numpy, not torch: torch's fill_ runs on OpenMP threads that keep spinning after it
            # and would steal the cores from the kernel timed next
            import numpy as np

            self.buffer = np.empty(n, dtype=np.float32)

    def __call__(self) -> None:
        self.buffer.fill(1.0) if not isinstance(self.buffer, torch.Tensor) else self.buffer.fill_(1.0)
        # a write touches every line (a read could be prefetched away)


def time_cpu(fn, *, warmup: int = 2, repeats: int = 15, flush: CacheFlusher | None = None) -> Timing:
    flush = flush if flush is not None else CacheFlusher("cpu")
    for _ in range(warmup):
        fn()
    t = Timing()
    for _ in range(repeats):
        flush()
        t0 = time.perf_counter()
        fn()
        t.samples.append(time.perf_counter() - t0)
    return t


def time_cuda(fn, *, warmup: int = 3, repeats: int = 30, flush: CacheFlusher | None = None) -> Timing:
    flush = flush if flush is not None else CacheFlusher("cuda")
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(repeats)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(repeats)]
    for i in range(repeats):
        flush()
        starts[i].record()
        fn()
        ends[i].record()
    torch.cuda.synchronize()
    return Timing([s.elapsed_time(e) * 1e-3 for s, e in zip(starts, ends)])


def time_fn(fn, device: str = "cpu", **kw) -> Timing:
    return time_cuda(fn, **kw) if device == "cuda" else time_cpu(fn, **kw)


def side_by_side(fns: dict, device: str = "cpu", *, warmup: int = 2, rounds: int = 30) -> dict:
    """Time several functions in one run, interleaved (a b c a b c ...), so that a change in
    the machine's load hits all of them alike: the fair way to report a gain on a shared
    machine.  Returns name -> Timing."""
    flush = CacheFlusher(device)
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    out = {name: Timing() for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            one = time_fn(fn, device, warmup=0, repeats=1, flush=flush)
            out[name].samples.extend(one.samples)
    return out


def host_has(target) -> bool:
    """Whether `target` is this machine, so that its kernels can be timed here."""
    if not target.is_gpu:
        return True  # the cpu descriptor is always completed from this host
    from ssmc.targets import detect_host

    host = detect_host()
    return host.is_gpu and host.backend == target.backend and host.arch == target.arch
