# A kernel call's arrays as raw C-contiguous buffers. A typed memoryview costs about 1.5k
# instructions to acquire (a Python object, NumPy's format string parsed by Cython, strides
# checked); the plain buffer protocol costs a third of that, which is 10% of a seed-sized
# call (benchmarks/RESULTS.md, "The per-call overhead"). Each buffer is held, and its shape
# read, for the whole call: the arrays are the call record's private ones, and a held buffer
# also stops NumPy from resizing them.
from cpython.buffer cimport (
    PyBUF_C_CONTIGUOUS,
    PyBUF_FORMAT,
    PyBUF_WRITABLE,
    PyBuffer_Release,
    PyObject_GetBuffer,
)
from libc.string cimport strchr

cdef enum:
    MAX_HELD = 8



cdef struct HeldBuffers:
    # The buffers a call holds, released together by release().
    Py_buffer views[MAX_HELD]
    int n


cdef inline Py_buffer* hold(HeldBuffers* held, object array, int ndim, Py_ssize_t itemsize,
                            const char* formats, bint writable) except NULL:
    """Acquire `array` for the rest of the call: C-contiguous, `ndim` dimensions of
    `itemsize`-byte items whose format is one of `formats` (NumPy's native float32 is "f",
    float64 "d", intp one of "ilqn"). Anything else is an internal error (the wrapper hands
    over canonical arrays): ValueError, nothing read."""
    cdef Py_buffer* view = &held.views[held.n]
    if held.n == MAX_HELD:
        raise ValueError("internal error: more buffers than MAX_HELD")
    PyObject_GetBuffer(array, view,
                       PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (PyBUF_WRITABLE if writable else 0))
    held.n += 1
    if (view.ndim != ndim or view.itemsize != itemsize or view.format == NULL
            or view.format[0] == 0 or view.format[1] != 0
            or strchr(formats, view.format[0]) == NULL):
        raise ValueError(f"internal error: expected a {ndim}-D array of {itemsize}-byte "
                         f"items ({formats.decode()}), got format {view.format!r}, "
                         f"{view.ndim}-D")
    return view


cdef inline int check_length(const Py_buffer* view, Py_ssize_t axis, Py_ssize_t length,
                             str what) except -1:
    """That axis `axis` of a held buffer has `length` items (internal error otherwise)."""
    if view.shape[axis] != length:
        raise ValueError(f"internal error: {what} has {view.shape[axis]} items along axis "
                         f"{axis}, expected {length}")
    return 0


cdef inline void release(HeldBuffers* held) noexcept:
    """Release every held buffer."""
    cdef int i
    for i in range(held.n):
        PyBuffer_Release(&held.views[i])
    held.n = 0
