# The parallel skeleton every kernel runs: a loop over independent work items (RoIs, or
# (image, channel block) pairs) on an OpenMP team, with per-thread scratch and one shared
# failure flag. Each kernel supplies only what one work item does.
#
# Scratch is allocated on a thread's first item, so a thread that gets no work allocates
# nothing, and freed by the calling thread after the team has finished.

from cython.parallel cimport prange
from libc.stdlib cimport calloc, free, malloc

from roialign_cy._kernel_call cimport KernelCall
from roialign_cy._sample_table cimport SampleTable, floating, table_free, table_init
from roialign_cy._shims cimport omp_get_thread_num

cdef enum:
    N_BUFFERS = 4


cdef struct ScratchSpec:
    # What each thread needs: a sample table for (table_h, table_w) bins (0: none) and up to
    # N_BUFFERS plain buffers of bytes[i] bytes (0: none).
    Py_ssize_t table_h
    Py_ssize_t table_w
    size_t bytes[N_BUFFERS]


cdef inline ScratchSpec scratch_spec(Py_ssize_t table_h, Py_ssize_t table_w, size_t bytes0,
                                     size_t bytes1, size_t bytes2=0, size_t bytes3=0) noexcept nogil:
    """A ScratchSpec: a sample table of (table_h, table_w) bins (0: none) and four buffers."""
    cdef ScratchSpec spec
    spec.table_h, spec.table_w = table_h, table_w
    spec.bytes[0], spec.bytes[1], spec.bytes[2], spec.bytes[3] = bytes0, bytes1, bytes2, bytes3
    return spec


cdef struct Scratch:
    # One thread's scratch, reused for every work item it runs.
    bint ready
    SampleTable table
    void* buffers[N_BUFFERS]


cdef inline bint scratch_init(Scratch* scratch, const ScratchSpec* spec) noexcept nogil:
    """Allocate what spec asks for into a zeroed Scratch; False when out of memory."""
    cdef int i
    scratch.ready = True  # scratch_free releases whatever was allocated, even after a failure
    if spec.table_h > 0 and not table_init(&scratch.table, spec.table_h, spec.table_w):
        return False
    for i in range(N_BUFFERS):
        if spec.bytes[i] > 0:
            scratch.buffers[i] = malloc(spec.bytes[i])
            if scratch.buffers[i] == NULL:
                return False
    return True


cdef inline void scratch_free(Scratch* scratch) noexcept nogil:
    """Release a Scratch (zeroed or initialised)."""
    cdef int i
    table_free(&scratch.table)
    for i in range(N_BUFFERS):
        free(scratch.buffers[i])


cdef inline bint run_items(bint (*run_item)(const KernelCall* call, Scratch* scratch,
                                            Py_ssize_t item, const floating* type_tag) noexcept nogil,
                           const KernelCall* call, Py_ssize_t n_items, const ScratchSpec* spec,
                           int n_threads) noexcept nogil:
    """run_item(call, scratch, item, NULL) for every item in [0, n_items) on n_threads threads.

    Items are handed out dynamically (RoIs differ in cost). `call` is read-only while the
    team runs; type_tag only selects the float type T of the item function. Returns False
    when scratch could not be allocated or an item failed (out of memory); the remaining
    items are then skipped.
    """
    cdef Scratch* scratches = <Scratch*>calloc(n_threads, sizeof(Scratch))
    cdef int failed = 0
    cdef int* failed_flag = &failed  # written through a pointer: shared, not lastprivate
    cdef Scratch* scratch
    cdef Py_ssize_t item
    cdef int t
    if scratches == NULL:
        return False
    for item in prange(n_items, schedule='dynamic', num_threads=n_threads,
                       use_threads_if=n_threads > 1):
        if failed_flag[0]:
            continue
        scratch = &scratches[omp_get_thread_num()]
        if not scratch.ready and not scratch_init(scratch, spec):
            failed_flag[0] = 1
        elif not run_item(call, scratch, item, <const floating*>NULL):
            failed_flag[0] = 1
    for t in range(n_threads):
        scratch_free(&scratches[t])
    free(scratches)
    return not failed
