# Box rows checked and converted in one compiled pass: the Python wrapper calls this on
# every call, so it must cost microseconds, not a dozen NumPy reductions.

from libc.math cimport floor, isfinite

from roialign_cy._bilinear cimport floating

cdef enum BoxProblem:
    # What split_rows found wrong with a row.
    BOX_OK = 0
    BOX_NOT_FINITE = 1          # a coordinate is NaN or infinite
    BOX_TOO_LARGE = 2           # a coordinate overflows the features' dtype
    BOX_INDEX_NOT_INTEGER = 3
    BOX_INDEX_OUT_OF_RANGE = 4

# The same codes for Python (plain ints: comparing them costs nothing).
NOT_FINITE = BOX_NOT_FINITE
TOO_LARGE = BOX_TOO_LARGE
INDEX_NOT_INTEGER = BOX_INDEX_NOT_INTEGER
INDEX_OUT_OF_RANGE = BOX_INDEX_OUT_OF_RANGE


cdef inline BoxProblem split_row(const double* row, Py_ssize_t n_images,
                                 Py_ssize_t* batch_index, floating* coords) noexcept nogil:
    """Check one row [batch_index, x1, y1, x2, y2] and write its two parts."""
    cdef Py_ssize_t i
    cdef floating value
    for i in range(4):
        if not isfinite(row[i + 1]):
            return BOX_NOT_FINITE
        value = <floating>row[i + 1]
        if not isfinite(value):
            return BOX_TOO_LARGE
        coords[i] = value
    if not isfinite(row[0]) or floor(row[0]) != row[0]:
        return BOX_INDEX_NOT_INTEGER
    if not (row[0] >= 0 and row[0] < n_images):
        return BOX_INDEX_OUT_OF_RANGE
    batch_index[0] = <Py_ssize_t>row[0]
    return BOX_OK


def split_rows(const double[:, ::1] rows, Py_ssize_t n_images, Py_ssize_t[::1] batch_index,
               floating[:, ::1] coords):
    """Split (K, 5) rows into batch_index and coords (cast to the features' dtype).

    Returns (row, problem): the first bad row and what is wrong with it, or (-1, 0).
    """
    cdef BoxProblem problem = BOX_OK
    cdef Py_ssize_t k
    with nogil:
        for k in range(rows.shape[0]):
            problem = split_row(&rows[k, 0], n_images, &batch_index[k], &coords[k, 0])
            if problem != BOX_OK:
                break
    if problem != BOX_OK:
        return k, <int>problem
    return -1, 0
