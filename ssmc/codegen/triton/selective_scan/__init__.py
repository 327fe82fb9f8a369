"""Mamba-1 selective scan in Triton: one module per algorithm (sequential, associative,
chunked), all with mamba-ssm's `selective_scan_fn` arguments.  `problem.py` checks and
normalises the arguments once for all three."""

from ssmc.codegen.triton.selective_scan.associative import (AssociativeScanConfig,
                                                            selective_scan_associative)
from ssmc.codegen.triton.selective_scan.chunked import ChunkedScanConfig, selective_scan_chunked
from ssmc.codegen.triton.selective_scan.sequential import (SequentialScanConfig,
                                                           selective_scan_sequential)

ALGORITHMS = {
    "sequential": selective_scan_sequential,
    "associative": selective_scan_associative,
    "chunked": selective_scan_chunked,
}


def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                   return_last_state=False, initial_state=None, conj_pair=True,
                   cu_seqlens=None, algorithm="sequential", config=None):
    """The selective scan by the named algorithm (config: that algorithm's Config)."""
    if algorithm not in ALGORITHMS:
        raise ValueError(f"algorithm: expected one of {', '.join(ALGORITHMS)}, "
                         f"got {algorithm!r}")
    return ALGORITHMS[algorithm](u, delta, A, B, C, D, z, delta_bias, delta_softplus,
                                 return_last_state, initial_state, conj_pair,
                                 cu_seqlens=cu_seqlens, config=config)


__all__ = ["ALGORITHMS", "AssociativeScanConfig", "ChunkedScanConfig", "SequentialScanConfig",
           "selective_scan", "selective_scan_associative", "selective_scan_chunked",
           "selective_scan_sequential"]
