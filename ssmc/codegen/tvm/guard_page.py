"""Testing aid for kernels: a tensor that starts right after an inaccessible page: a kernel reading even one element
before the tensor segfaults instead of silently reading a neighbour (which is what speculated
out-of-bounds loads usually do, unnoticed)."""

import contextlib
import ctypes
import mmap

import numpy as np
import torch

PROT_NONE, PROT_RW = 0, 3


@contextlib.contextmanager
def after_guard_page(values: torch.Tensor):
    """Yield a copy of `values` (fp32 or int32, contiguous) whose first byte is page aligned and
    whose preceding page is PROT_NONE."""
    page = mmap.PAGESIZE
    dtype = {torch.float32: np.float32, torch.int32: np.int32}[values.dtype]
    nbytes = values.numel() * values.element_size()
    buf = mmap.mmap(-1, page + max(nbytes, 1))
    anchor = ctypes.c_char.from_buffer(buf)
    addr = ctypes.addressof(anchor)
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.mprotect(ctypes.c_void_p(addr), page, PROT_NONE) != 0:
        raise OSError(ctypes.get_errno(), "mprotect failed")
    try:
        arr = np.frombuffer(buf, dtype=dtype, count=values.numel(), offset=page)
        t = torch.from_numpy(arr).view(values.shape)
        t.copy_(values)
        yield t
        del t, arr
    finally:
        libc.mprotect(ctypes.c_void_p(addr), page, PROT_RW)
        del anchor
