"""Chimera's 2-D SSM in Triton: the anti-diagonal wavefront (oracle ssmc.semantics.ssm2d)."""

from ssmc.codegen.triton.ssm2d.wavefront import (Ssm2dWavefrontConfig, plan_ssm2d_wavefront,
                                                 ssm2d_wavefront)

__all__ = ["Ssm2dWavefrontConfig", "plan_ssm2d_wavefront", "ssm2d_wavefront"]
