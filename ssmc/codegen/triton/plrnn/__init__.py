"""PLRNN (convSSM's latent recurrence) in Triton: the sequential kernel over many trajectories,
with the HRF convolution fused (oracle ssmc.semantics.recurrence)."""

from ssmc.codegen.triton.plrnn.sequential import (FUSE_MAX_TAPS, PlrnnSequentialConfig,
                                                  plan_plrnn, plrnn_sequential)

__all__ = ["FUSE_MAX_TAPS", "PlrnnSequentialConfig", "plan_plrnn", "plrnn_sequential"]
