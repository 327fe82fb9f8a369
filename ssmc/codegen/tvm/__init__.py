"""TVM backend: TIR kernels compiled through LLVM for the host CPU (and CUDA source from the
same builders).  `import tvm` takes seconds, so importing this package is deliberately lazy
about nothing else: import it only where TVM kernels are wanted."""

from ssmc.codegen.tvm.config import Config, default_config
from ssmc.codegen.tvm.selective_scan import (
    get_kernel,
    selective_scan,
    selective_scan_cuda_source,
)
from ssmc.codegen.tvm.selective_scan_tir import ScanSignature

__all__ = ["Config", "ScanSignature", "default_config", "get_kernel", "selective_scan",
           "selective_scan_cuda_source"]
