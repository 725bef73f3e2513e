# The parallel skeleton every kernel runs: a loop over independent work items (RoIs, or
# (image, channel block) pairs) on an OpenMP team, with per-thread scratch and one shared
# failure flag. Each kernel supplies only what one work item does.
#
# Scratch is allocated on a thread's first item, so a thread that gets no work allocates
# nothing, and freed by the calling thread after the team has finished. A call runs in time
# slices (see run_items) so that it can be interrupted.

from cython.parallel cimport parallel
from libc.stdlib cimport calloc, free, malloc
from libc.string cimport memset

from roialign_cy._kernel_call cimport KernelCall
from roialign_cy._sample_table cimport SampleTable, floating, table_free, table_init
from roialign_cy._shims cimport SLICE_SECONDS, fetch_add, omp_get_thread_num, seconds

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


cdef inline Py_ssize_t run_items(bint (*run_item)(const KernelCall* call, Scratch* scratch,
                                                  Py_ssize_t item,
                                                  const floating* type_tag) noexcept nogil,
                                 const KernelCall* call, Py_ssize_t first_item, Py_ssize_t n_items,
                                 const ScratchSpec* spec, int n_threads) noexcept nogil:
    """run_item(call, scratch, item, NULL) for the items from first_item on, on n_threads
    threads, for about SLICE_SECONDS.

    Each thread takes the next item from a shared counter (RoIs differ in cost: dynamic
    scheduling) and stops when the items are done or the slice is over, so every item below
    the counter has run. Returns the next item to run, 0 when all are done (a slice runs at
    least one item), -1 when scratch could not be allocated or an item failed (out of
    memory). The caller calls again from the returned item, and between calls Python sees
    signals: a long call stays interruptible. `call` is read-only while the team runs;
    type_tag only selects the float type T of the item function.
    """
    cdef Scratch one_thread  # a serial call (the usual small one) needs no heap array
    cdef Scratch* scratches = &one_thread
    cdef Py_ssize_t next_item = first_item
    cdef Py_ssize_t* next_ptr = &next_item  # shared by the team, taken with fetch_add
    cdef int failed = 0
    cdef int* failed_flag = &failed  # written through a pointer: shared, not lastprivate
    cdef double deadline = seconds() + SLICE_SECONDS
    cdef Scratch* scratch
    cdef Py_ssize_t item
    cdef int t
    if n_threads > 1:
        scratches = <Scratch*>calloc(n_threads, sizeof(Scratch))
        if scratches == NULL:
            return -1
    else:
        memset(&one_thread, 0, sizeof(Scratch))
    with parallel(num_threads=n_threads, use_threads_if=n_threads > 1):
        scratch = &scratches[omp_get_thread_num()]
        while True:
            item = fetch_add(next_ptr, 1)
            if item >= n_items or failed_flag[0]:
                break
            if not scratch.ready and not scratch_init(scratch, spec):
                failed_flag[0] = 1
                break
            if not run_item(call, scratch, item, <const floating*>NULL):
                failed_flag[0] = 1
                break
            if seconds() > deadline:
                break
    for t in range(n_threads):
        scratch_free(&scratches[t])
    if scratches != &one_thread:
        free(scratches)
    if failed:
        return -1
    return 0 if next_item >= n_items else next_item
