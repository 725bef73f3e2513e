# What this build and this CPU offer: OpenMP compiled in, OpenMP's default team size, AVX2;
# and the signal check between a long call's time slices.
# Built with the baseline flags only, so it imports on any CPU; the dispatcher asks it which
# build of the kernels to run.

from cpython.exc cimport PyErr_CheckSignals

from roialign_cy._shims cimport (
    ROIALIGN_GNU_OPENMP,
    ROIALIGN_HAVE_OPENMP,
    omp_get_max_threads,
    roialign_cpu_has_avx2,
)

OPENMP_ENABLED = bool(ROIALIGN_HAVE_OPENMP)
# Built against GNU libgomp, whose thread pool does not survive fork().
GNU_OPENMP = bool(ROIALIGN_GNU_OPENMP)


def openmp_max_threads():
    """omp_get_max_threads(): the team size a parallel region gets by default (1 if serial)."""
    return omp_get_max_threads()


def cpu_has_avx2():
    """Whether this CPU, and the OS, can run the AVX2 build of the kernels."""
    return roialign_cpu_has_avx2()


def check_signals():
    """Run Python's pending signal handlers now (KeyboardInterrupt after Ctrl-C). A long
    call runs in time slices, and compiled code between two slices never passes through the
    interpreter's loop, which is where Python would otherwise run them."""
    PyErr_CheckSignals()
