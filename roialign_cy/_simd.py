"""Which build of the compiled kernels this process runs.

setup.py compiles the kernels twice on x86-64: a baseline build (SSE2, runs anywhere) and an
AVX2 build of the very same code, whose channel loops use 256-bit vectors. Both give the same
numbers bit for bit (no FMA: every product and sum is rounded as torchvision rounds it). The
AVX2 build is used when the CPU has AVX2; ``ROIALIGN_CY_SIMD=baseline`` forces the baseline.
"""

import os

import numpy as np

from roialign_cy import _kernels, _pool_kernels

_C_TYPES = {np.dtype(np.float32): "float", np.dtype(np.float64): "double"}


def _select():
    """(name, align kernels, pool kernels) for this CPU and environment."""
    if os.environ.get("ROIALIGN_CY_SIMD", "").strip().lower() == "baseline":
        return "baseline", _kernels, _pool_kernels
    if not _kernels.cpu_has_avx2():
        return "baseline", _kernels, _pool_kernels
    try:
        from roialign_cy import _kernels_avx2, _pool_kernels_avx2
    except ImportError:  # not built: not x86-64, or a compiler without -mavx2
        return "baseline", _kernels, _pool_kernels
    return "avx2", _kernels_avx2, _pool_kernels_avx2


name, kernels, pool_kernels = _select()


def align(function, dtype):
    """kernels.<function> specialized for float32 or float64 `dtype`.

    Indexing the fused function once skips Cython's dispatch, which inspects every array
    argument on each call (about 0.5 us of a 10 us call).
    """
    return getattr(kernels, function)[_C_TYPES[dtype]]


def pool(function, dtype):
    """pool_kernels.<function> specialized for float32 or float64 `dtype` (see align)."""
    return getattr(pool_kernels, function)[_C_TYPES[dtype]]
