# OpenMP shim: the real runtime when the extension is built with OpenMP, serial stand-ins
# otherwise. Never `cimport openmp`: that needs omp.h even for the serial fallback build.

cdef extern from *:
    """
    #ifdef _OPENMP
    #include <omp.h>
    #define ROIALIGN_HAVE_OPENMP 1
    #else
    #define ROIALIGN_HAVE_OPENMP 0
    static int omp_get_max_threads(void) { return 1; }
    static int omp_get_thread_num(void) { return 0; }
    #endif
    """
    bint ROIALIGN_HAVE_OPENMP
    int omp_get_max_threads() noexcept nogil
    int omp_get_thread_num() noexcept nogil
