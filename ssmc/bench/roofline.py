"""The roofline: the least time a kernel's work can take on a target, from the cost model's counts.

A kernel moves `bytes`, does `flops` and evaluates `exps` special functions (ssmc.costmodel's
work functions give the three per node kind and algorithm).  On a target each count alone takes

    memory  = bytes / bandwidth
    compute = flops / peak fp32 (or bf16 matrix) rate
    exp     = exps / exp rate      (units x exp per clock per unit x clock)

and the kernel can be no faster than the largest of the three (the bound).  A sequence of
kernels (a whole model) is bounded by the sum of its kernels' bounds, since they run one after
another.  Unlike costmodel.estimate, nothing is charged for launches, the latency chain or
idle lanes: this is the ideal that a measured time is held against, not a prediction.

On a CPU the exp bound matters most for selective scans (one exp per state per step), so it is
reported on its own as the exp-bound limit.
"""

from __future__ import annotations

from dataclasses import dataclass

from ssmc import costmodel as cm


@dataclass(frozen=True)
class Roofline:
    bytes: float
    flops: float
    exps: float
    memory_s: float
    compute_s: float
    exp_s: float
    time_s: float  # the roofline: per kernel the largest bound, summed over kernels
    bound: str  # which bound dominates the total: memory | compute | exp
    kernels: int = 1

    def fraction(self, measured_s: float) -> float | None:
        """Share of the roofline a measured time reaches (1.0 = at the roofline)."""
        if not measured_s or measured_s <= 0:
            return None
        return self.time_s / measured_s

    def exp_fraction(self, measured_s: float) -> float | None:
        if not measured_s or measured_s <= 0 or self.exp_s <= 0:
            return None
        return self.exp_s / measured_s

    def as_dict(self) -> dict:
        return {"time_s": self.time_s, "bound": self.bound, "memory_s": self.memory_s,
                "compute_s": self.compute_s, "exp_s": self.exp_s, "bytes": self.bytes,
                "flops": self.flops, "exps": self.exps, "kernels": self.kernels}


def rates(target) -> dict:
    """Bytes/s, flops/s (fp32 and matrix) and exps/s of a target descriptor."""
    return {"bytes_per_s": target.mem_bandwidth_gbs * 1e9,
            "flops_per_s": target.fp32_tflops * 1e12,
            "tc_flops_per_s": target.bf16_tflops * 1e12,
            "exps_per_s": target.units * target.exp_per_clk_per_unit * target.clock_ghz * 1e9}


def _bounds(work: cm.Work, r: dict) -> dict:
    flops_rate = r["tc_flops_per_s"] if work.tensor_core else r["flops_per_s"]
    return {"memory": work.bytes / r["bytes_per_s"] if r["bytes_per_s"] else 0.0,
            "compute": work.flops / flops_rate if flops_rate else 0.0,
            "exp": work.exps / r["exps_per_s"] if r["exps_per_s"] else 0.0}


def roofline(works, target) -> Roofline:
    """The roofline of one kernel's Work or of a sequence of them, on `target`."""
    works = [works] if isinstance(works, cm.Work) else list(works)
    r = rates(target)
    total = {"memory": 0.0, "compute": 0.0, "exp": 0.0}
    time_s = 0.0
    dominant = {"memory": 0.0, "compute": 0.0, "exp": 0.0}
    for w in works:
        b = _bounds(w, r)
        for k in total:
            total[k] += b[k]
        worst = max(b, key=b.get)
        time_s += b[worst]
        dominant[worst] += b[worst]
    return Roofline(bytes=sum(w.bytes for w in works), flops=sum(w.flops for w in works),
                    exps=sum(w.exps for w in works), memory_s=total["memory"],
                    compute_s=total["compute"], exp_s=total["exp"], time_s=time_s,
                    bound=max(dominant, key=dominant.get), kernels=len(works))


def linear_work(rows: int, fan_in: int, fan_out: int, io_bytes: int = 4) -> cm.Work:
    """A dense layer on `rows` vectors: the matmul's flops and its inputs, weight and output."""
    return cm.Work(bytes=io_bytes * (rows * fan_in + fan_in * fan_out + rows * fan_out),
                   flops=2.0 * rows * fan_in * fan_out, exps=0, depth=1, lanes=rows * fan_out)
