# The C shims of _shims.h (OpenMP stand-ins, the CPU's AVX2 support, the SSE transpose, an
# atomic counter and a clock).
# Never `cimport openmp`: that needs omp.h even for the serial fallback build.

cdef extern from "_shims.h":
    bint ROIALIGN_HAVE_OPENMP
    bint ROIALIGN_GNU_OPENMP
    int omp_get_max_threads() noexcept nogil
    int omp_get_thread_num() noexcept nogil
    bint roialign_cpu_has_avx2() noexcept nogil
    Py_ssize_t fetch_add "roialign_fetch_add"(Py_ssize_t* counter, Py_ssize_t n) noexcept nogil
    double seconds "roialign_seconds"() noexcept nogil
    double slice_seconds "roialign_slice_seconds"() noexcept nogil
    void transpose4 "roialign_transpose4"(const float* src, Py_ssize_t src_stride, float* dst,
                                          Py_ssize_t dst_stride) noexcept nogil
