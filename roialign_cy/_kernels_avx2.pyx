# _kernels.pyx compiled a second time with AVX2 (see setup.py): the same code, 256-bit
# vectors in the channel loops. _simd.py imports it only on CPUs that have AVX2.
include "_kernels.pyx"
