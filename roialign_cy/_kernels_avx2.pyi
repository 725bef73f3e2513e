# Type stub: the AVX2 build of _kernels (the same functions; see _simd.py).
from roialign_cy._kernels import *  # noqa: F403
