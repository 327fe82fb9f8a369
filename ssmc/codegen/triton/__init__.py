"""The Triton backend: one kernel family per algorithm (fla's layout, ops/<op>/<algorithm>).

  selective_scan/  Mamba-1: sequential, associative, chunked       (oracle: semantics.selective)
  ssd/             Mamba-2 SSD: chunked matmul form                (oracle: semantics.selective)
  s4d/             S4D: recurrent, Vandermonde + FFT convolution   (oracle: semantics.diagonal)
  ssm2d/           Chimera's 2-D SSM: anti-diagonal wavefront      (oracle: semantics.ssm2d)
  plrnn/           PLRNN (+ fused HRF conv): sequential            (oracle: semantics.recurrence)
  dense/           dense / block-diagonal selective SSM: sequential (oracle: semantics.dense)
  families.py      registry: Config, search space, plan, example problem per family
  aot.py           compile a family for a target descriptor without a GPU

Every launcher takes torch tensors (CUDA/ROCm, or CPU under TRITON_INTERPRET=1) and a Config
dataclass of launch knobs, checks its arguments (ValueError naming the argument), computes in
fp32 with fp32 state whatever the input dtype (fp32/fp16/bf16), and returns the input dtype.
"""

from ssmc.codegen.triton.s4d import (S4dRecurrentConfig, VandermondeConfig, fft_causal_conv,
                                     s4d_conv, s4d_kernel_vandermonde, s4d_recurrent)
from ssmc.codegen.triton.selective_scan import (AssociativeScanConfig, ChunkedScanConfig,
                                                SequentialScanConfig, selective_scan,
                                                selective_scan_associative,
                                                selective_scan_chunked,
                                                selective_scan_sequential)
from ssmc.codegen.triton.ssd import SsdChunkedConfig, ssd_chunked

__all__ = [
    "AssociativeScanConfig", "ChunkedScanConfig", "S4dRecurrentConfig", "SequentialScanConfig",
    "SsdChunkedConfig", "VandermondeConfig", "fft_causal_conv", "s4d_conv",
    "s4d_kernel_vandermonde", "s4d_recurrent", "selective_scan", "selective_scan_associative",
    "selective_scan_chunked", "selective_scan_sequential", "ssd_chunked",
]
