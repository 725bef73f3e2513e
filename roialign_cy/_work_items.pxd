# The parallel skeleton every kernel runs: a loop over independent work items (RoIs, or
# (image, channel block) pairs) on an OpenMP team, with per-thread scratch and one shared
# failure flag. Each kernel supplies only what one work item does.
#
# Scratch is allocated on a thread's first item, so a thread that gets no work allocates
# nothing, and freed by the calling thread after the team has finished. A call runs in time
# slices (see run_items) so that it can be interrupted. An (image, channel block) item walks
# all its image's RoIs, as long as the caller makes it, so such an item pauses between two
# of its steps when the slice is over (pause_at) and a later slice resumes it there
# (resume_from): a slice outlasts slice_seconds() by about a step (pause_at).

from cython.parallel cimport parallel
from libc.stdlib cimport calloc, free, malloc
from libc.string cimport memset

from roialign_cy._kernel_call cimport KernelCall
from roialign_cy._sample_table cimport SampleTable, floating, table_free, table_init
from roialign_cy._shims cimport fetch_add, omp_get_thread_num, seconds, slice_seconds

cdef enum:
    N_BUFFERS = 4
    # pause_at reads the clock at least every MAX_CHECK_STEPS steps and about every
    # CHECK_MICROSECONDS: a clock read costs ~30 ns, and many_small's 20000 RoIs make
    # 320,000 steps of its channel blocks (0.4 us each). A long step halves the count, so
    # that a slice outlasts slice_seconds() by about CHECK_MICROSECONDS and a step.
    MAX_CHECK_STEPS = 64
    CHECK_MICROSECONDS = 1000


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
    # Pausing (run_items sets all but `paused` before each item; pause_at sets it):
    double deadline       # when this slice is over
    bint pausable         # the call keeps a paused list: long items may pause
    Py_ssize_t check_every  # pause_at reads the clock every check_every steps ...
    Py_ssize_t unchecked    # ... (this many since the last read, at time last_check)
    double last_check
    bint resuming         # this item paused in an earlier slice, at step resume_step
    bint paused           # this thread's last item paused, to go on from step resume_step
    Py_ssize_t resume_step
    Py_ssize_t paused_item


cdef inline Py_ssize_t resume_from(const Scratch* scratch, Py_ssize_t first_step) noexcept nogil:
    """The step a pausable work item starts at: first_step, or the step it paused at in an
    earlier slice (an item's steps are its own: RoIs of its image, channel planes, ...)."""
    return scratch.resume_step if scratch.resuming else first_step


cdef inline bint pause_at(Scratch* scratch, Py_ssize_t next_step,
                          Py_ssize_t end_step) noexcept nogil:
    """After a step of a long work item whose steps end at end_step: True when steps are
    left and the time slice is over. The item then saves what it holds (its outputs are
    complete up to next_step) and returns True, and a later slice runs it again from
    next_step (resume_from)."""
    cdef double now
    if next_step >= end_step or not scratch.pausable:
        return False
    scratch.unchecked += 1
    if scratch.unchecked < scratch.check_every:
        return False
    scratch.unchecked = 0
    now = seconds()
    if now > scratch.deadline:
        scratch.paused = True
        scratch.resume_step = next_step
        return True
    # Short steps: read the clock half as often; long ones: twice as often.
    if now - scratch.last_check < CHECK_MICROSECONDS * 1e-6:
        if scratch.check_every < MAX_CHECK_STEPS:
            scratch.check_every *= 2
    elif scratch.check_every > 1:
        scratch.check_every //= 2
    scratch.last_check = now
    return False


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


cdef inline Py_ssize_t* paused_list(Py_ssize_t[::1] paused, int n_threads) except? NULL:
    """The paused list of a call whose items may pause (run_items), NULL for None; checks
    that it has room for n_threads items."""
    if paused is None:
        return NULL
    if paused.shape[0] < 1 + 2 * n_threads or not 0 <= paused[0] <= n_threads:
        raise ValueError("internal error: the paused list is too short or corrupt")
    return &paused[0]


cdef inline Py_ssize_t run_items(bint (*run_item)(const KernelCall* call, Scratch* scratch,
                                                  Py_ssize_t item,
                                                  const floating* type_tag) noexcept nogil,
                                 const KernelCall* call, Py_ssize_t first_item, Py_ssize_t n_items,
                                 const ScratchSpec* spec, int n_threads,
                                 Py_ssize_t* paused=NULL) noexcept nogil:
    """run_item(call, scratch, item, NULL) for the items from first_item on, on n_threads
    threads, for about slice_seconds().

    Each thread takes the next item from a shared counter (RoIs differ in cost: dynamic
    scheduling) and stops when the items are done or the slice is over, so every item below
    the counter has run or paused. Returns the next item to run, 0 when all are done (a
    slice runs at least one step), -1 when scratch could not be allocated or an item failed
    (out of memory). The caller calls again from the returned item, and between calls Python
    sees signals: a long call stays interruptible. `call` is read-only while the team runs;
    type_tag only selects the float type T of the item function.

    paused (NULL: items never pause): the items that paused, kept between slices:
    paused[0] of them, (item, step) at paused[1 + 2 i], room for n_threads (the first
    slice's team, the largest). They run first, from their step, then the counter's items.
    """
    cdef Scratch one_thread  # a serial call (the usual small one) needs no heap array
    cdef Scratch* scratches = &one_thread
    cdef Py_ssize_t n_resumed = 0 if paused == NULL else paused[0]
    cdef Py_ssize_t taken = 0  # items taken: the paused ones first, then the counter's
    cdef Py_ssize_t* taken_ptr = &taken  # shared by the team, taken with fetch_add
    cdef int failed = 0
    cdef int* failed_flag = &failed  # written through a pointer: shared, not lastprivate
    cdef double start = seconds()
    cdef double deadline = start + slice_seconds()
    cdef Scratch* scratch
    cdef Py_ssize_t item, next_item, n_paused, i
    cdef int t
    if n_threads > 1:
        scratches = <Scratch*>calloc(n_threads, sizeof(Scratch))
        if scratches == NULL:
            return -1
    else:
        memset(&one_thread, 0, sizeof(Scratch))
    with parallel(num_threads=n_threads, use_threads_if=n_threads > 1):
        scratch = &scratches[omp_get_thread_num()]
        scratch.deadline, scratch.pausable = deadline, paused != NULL
        scratch.check_every, scratch.unchecked, scratch.last_check = 1, 0, start
        while True:
            item = fetch_add(taken_ptr, 1)
            scratch.resuming = item < n_resumed
            if scratch.resuming:
                scratch.resume_step = paused[2 + 2 * item]
                item = paused[1 + 2 * item]
            else:
                item = first_item + item - n_resumed
            if item >= n_items or failed_flag[0]:
                break
            if not scratch.ready and not scratch_init(scratch, spec):
                failed_flag[0] = 1
                break
            if not run_item(call, scratch, item, <const floating*>NULL):
                failed_flag[0] = 1
                break
            if scratch.paused:  # the slice is over; this thread takes nothing more
                scratch.paused_item = item
                break
            if seconds() > deadline:
                break
    # The paused list for the next slice: the paused items this slice did not take, then
    # the ones that paused in it (a thread pauses one item at most).
    n_paused = 0
    if paused != NULL:
        for i in range(taken if taken < n_resumed else n_resumed, n_resumed):
            paused[1 + 2 * n_paused] = paused[1 + 2 * i]
            paused[2 + 2 * n_paused] = paused[2 + 2 * i]
            n_paused += 1
        for t in range(n_threads):
            if scratches[t].paused:
                paused[1 + 2 * n_paused] = scratches[t].paused_item
                paused[2 + 2 * n_paused] = scratches[t].resume_step
                n_paused += 1
        paused[0] = n_paused
    for t in range(n_threads):
        scratch_free(&scratches[t])
    if scratches != &one_thread:
        free(scratches)
    if failed:
        return -1
    next_item = first_item + (taken - n_resumed if taken > n_resumed else 0)
    if next_item >= n_items and n_paused == 0:
        return 0
    return next_item if next_item < n_items else n_items
