"""Composite kernels: whole SSM nodes assembled from library GEMMs / FFTs (torch) and the
compiled elementwise or scan kernels of ssmc.codegen.tvm (CPU) and ssmc.codegen.triton (GPU).

nested.py     nested recursion (RIR / BBT-GRC, beam): the level-synchronous tree
dense.py      the dense / block-diagonal selective SSM (linear CDE)
diagonal.py   the diagonal time-invariant SSM (S4D, polar): FFT with a blocked Vandermonde
              kernel, or the recurrence kernel
"""
