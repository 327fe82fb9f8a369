"""TVM backend: TIR kernels compiled through LLVM for the host CPU (and CUDA source from the
same builders).  `import tvm` takes seconds: import this package only where TVM kernels are
wanted.

    selective_scan(u, delta, A, B, C, ...)      Mamba-1 (mamba-ssm's arguments, 'bdl' or 'bld')
    ssd_scan(x, dt, A, B, C, ...)               Mamba-2 SSD (mamba_chunk_scan_combined's)
    causal_conv1d(x, weight, bias, "silu")      depthwise causal conv, channels-last
    selective_scan_cuda_source(signature)       CUDA C of the scan from the same builder
"""

from ssmc.codegen.tvm.config import Config, default_config
from ssmc.codegen.tvm.conv1d import causal_conv1d
from ssmc.codegen.tvm.selective_scan import (
    get_kernel,
    selective_scan,
    selective_scan_cuda_source,
)
from ssmc.codegen.tvm.selective_scan_tir import ScanSignature
from ssmc.codegen.tvm.ssd import ssd_scan

__all__ = ["Config", "ScanSignature", "causal_conv1d", "default_config", "get_kernel",
           "selective_scan", "selective_scan_cuda_source", "ssd_scan"]
