"""S4D (diagonal, time-invariant) in Triton: the recurrence, and the Vandermonde kernel of the
long-convolution form (the FFT by torch.fft).  Arguments as ssmc.semantics.diagonal's."""

from ssmc.codegen.triton.s4d.recurrent import S4dRecurrentConfig, s4d_recurrent
from ssmc.codegen.triton.s4d.vandermonde import (VandermondeConfig, fft_causal_conv, s4d_conv,
                                                 s4d_kernel_vandermonde)

__all__ = ["S4dRecurrentConfig", "VandermondeConfig", "fft_causal_conv", "s4d_conv",
           "s4d_kernel_vandermonde", "s4d_recurrent"]
