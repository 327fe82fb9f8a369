"""The dense / block-diagonal selective SSM (linear CDE) in Triton: the sequential mat-vec scan
(oracle ssmc.semantics.dense)."""

from ssmc.codegen.triton.dense.sequential import (DenseSequentialConfig, dense_scan_sequential,
                                                  dense_ssm_sequential, plan_dense_scan,
                                                  plan_dense_ssm)

__all__ = ["DenseSequentialConfig", "dense_scan_sequential", "dense_ssm_sequential",
           "plan_dense_scan", "plan_dense_ssm"]
