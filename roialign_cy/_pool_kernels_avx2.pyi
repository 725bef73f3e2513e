# Type stub: the AVX2 build of _pool_kernels (the same functions; see _simd.py).
from roialign_cy._pool_kernels import *  # noqa: F403
