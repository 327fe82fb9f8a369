"""Mamba-2 SSD in Triton (mamba-ssm's `mamba_chunk_scan_combined` arguments)."""

from ssmc.codegen.triton.ssd.chunked import SsdChunkedConfig, ssd_chunked

__all__ = ["SsdChunkedConfig", "ssd_chunked"]
