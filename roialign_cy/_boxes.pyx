# Box rows checked and converted in one compiled pass (and roi_pool's arg-max indices checked):
# the Python wrapper calls this on every call, so it must cost microseconds, not a dozen
# NumPy reductions.
#
# Unlike the kernels, these functions take their arrays through the plain buffer protocol,
# not typed memoryviews: for the few-element arrays of a small call, a memoryview (a Python
# object, a format string built by NumPy and parsed by Cython) cost more than the work, about
# 0.15 us per fresh array. Each array is checked to be C-contiguous with the expected item
# size and count before its pointer is used.

from cpython.buffer cimport PyBUF_FORMAT, PyBUF_WRITABLE, PyBuffer_Release, PyObject_GetBuffer
from libc.math cimport floor, isfinite

import numpy as np

from roialign_cy._sample_table cimport floating

# The dtype the rows arrive in: float32 and float64 boxes are read in place (no float64
# copy); any other dtype is converted to float64 by the wrapper first.
ctypedef fused box_real:
    float
    double

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


cdef int get_buffer(object array, Py_buffer* view, int flags, Py_ssize_t n_items,
                    Py_ssize_t itemsize, Py_ssize_t other_itemsize=0) except -1:
    """Acquire a C-contiguous array's buffer: n_items items of itemsize or other_itemsize bytes.

    Without PyBUF_STRIDES NumPy refuses any array that is not C-contiguous. The caller
    releases the buffer (PyBuffer_Release) once done with the pointer.
    """
    PyObject_GetBuffer(array, view, flags)
    if (view.itemsize != itemsize and view.itemsize != other_itemsize
            or view.len != n_items * view.itemsize):
        PyBuffer_Release(view)
        raise ValueError(f"internal error: expected {n_items} items of {itemsize} bytes")
    return 0


cdef inline BoxProblem split_row(const box_real* row, Py_ssize_t n_images, Py_ssize_t n_coords,
                                 Py_ssize_t* batch_index, floating* coords) noexcept nogil:
    """Check one row [batch_index, n_coords coordinates] and write its two parts."""
    cdef Py_ssize_t i
    cdef floating value
    # Read in double: a float32 row widens exactly, so the checks see the same values.
    cdef double index = row[0]
    for i in range(n_coords):
        if not isfinite(<double>row[i + 1]):
            return BOX_NOT_FINITE
        value = <floating>row[i + 1]
        if not isfinite(value):
            return BOX_TOO_LARGE
        coords[i] = value
    if not isfinite(index) or floor(index) != index:
        return BOX_INDEX_NOT_INTEGER
    if not (index >= 0 and index < n_images):
        return BOX_INDEX_OUT_OF_RANGE
    batch_index[0] = <Py_ssize_t>index
    return BOX_OK


cdef Py_ssize_t split_all(const box_real* rows, Py_ssize_t n_rois, Py_ssize_t n_images,
                          Py_ssize_t n_coords, Py_ssize_t* batch_index, floating* coords,
                          BoxProblem* problem) noexcept nogil:
    """Split every row; return the first bad one (and set `problem`), or -1."""
    cdef Py_ssize_t k
    for k in range(n_rois):
        problem[0] = split_row(&rows[(n_coords + 1) * k], n_images, n_coords, &batch_index[k],
                               &coords[n_coords * k])
        if problem[0] != BOX_OK:
            return k
    return -1


def split_rows(rows, Py_ssize_t n_images, dtype, Py_ssize_t n_coords=4):
    """Split (K, 1 + n_coords) rows into batch_index (intp) and coords (K, n_coords) of `dtype`.

    rows: C-contiguous float32 or float64 (K, 1 + n_coords); dtype: float32 or float64.
    Returns (batch_index, coords, row, problem): row is the first bad row and problem what is
    wrong with it, or (-1, 0).
    """
    cdef Py_ssize_t n_rois = len(rows)
    cdef Py_buffer rows_view, index_view, coords_view
    cdef BoxProblem problem = BOX_OK
    cdef Py_ssize_t row = -1
    batch_index = np.empty(n_rois, dtype=np.intp)
    coords = np.empty((n_rois, n_coords), dtype=dtype)
    get_buffer(rows, &rows_view, PyBUF_FORMAT, (n_coords + 1) * n_rois, 4, 8)
    try:
        if rows_view.format[0] not in b"fd" or rows_view.format[1] != 0:
            raise ValueError(f"internal error: rows of format {rows_view.format!r}")
        get_buffer(batch_index, &index_view, PyBUF_WRITABLE, n_rois, sizeof(Py_ssize_t))
        try:
            get_buffer(coords, &coords_view, PyBUF_WRITABLE, n_coords * n_rois, 4, 8)
            try:
                with nogil:
                    if rows_view.itemsize == 8 and coords_view.itemsize == 8:
                        row = split_all(<const double*>rows_view.buf, n_rois, n_images, n_coords,
                                        <Py_ssize_t*>index_view.buf,
                                        <double*>coords_view.buf, &problem)
                    elif rows_view.itemsize == 8:
                        row = split_all(<const double*>rows_view.buf, n_rois, n_images, n_coords,
                                        <Py_ssize_t*>index_view.buf,
                                        <float*>coords_view.buf, &problem)
                    elif coords_view.itemsize == 8:
                        row = split_all(<const float*>rows_view.buf, n_rois, n_images, n_coords,
                                        <Py_ssize_t*>index_view.buf,
                                        <double*>coords_view.buf, &problem)
                    else:
                        row = split_all(<const float*>rows_view.buf, n_rois, n_images, n_coords,
                                        <Py_ssize_t*>index_view.buf,
                                        <float*>coords_view.buf, &problem)
            finally:
                PyBuffer_Release(&coords_view)
        finally:
            PyBuffer_Release(&index_view)
    finally:
        PyBuffer_Release(&rows_view)
    return batch_index, coords, row, <int>problem


cdef void group(const Py_ssize_t* batch_index, Py_ssize_t n_rois, Py_ssize_t n_images,
                Py_ssize_t* roi_order, Py_ssize_t* image_first) noexcept nogil:
    """Counting sort of the RoIs by batch index, stable (see group_by_image)."""
    cdef Py_ssize_t k, b, start, total = 0
    for b in range(n_images + 1):
        image_first[b] = 0
    for k in range(n_rois):
        image_first[batch_index[k] + 1] += 1    # image_first[b + 1] = how many RoIs image b has
    for b in range(n_images):                   # ... = where image b starts
        start = total
        total = total + image_first[b + 1]
        image_first[b + 1] = start
    for k in range(n_rois):                     # ... = where image b ends (b + 1 starts)
        b = batch_index[k] + 1
        roi_order[image_first[b]] = k
        image_first[b] += 1


def group_by_image(batch_index, Py_ssize_t n_images):
    """RoIs grouped by image: (roi_order, image_first), both intp.

    batch_index: C-contiguous intp (K,), each in [0, n_images) (checked by split_rows).
    roi_order (K,) lists the RoIs image by image, in their original order within an image;
    image_first (N + 1,) is where each image's RoIs start in roi_order (image_first[N] = K).
    """
    cdef Py_ssize_t n_rois = len(batch_index)
    cdef Py_buffer index_view, order_view, first_view
    roi_order = np.empty(n_rois, dtype=np.intp)
    image_first = np.empty(n_images + 1, dtype=np.intp)
    get_buffer(batch_index, &index_view, 0, n_rois, sizeof(Py_ssize_t))
    try:
        get_buffer(roi_order, &order_view, PyBUF_WRITABLE, n_rois, sizeof(Py_ssize_t))
        try:
            get_buffer(image_first, &first_view, PyBUF_WRITABLE, n_images + 1,
                       sizeof(Py_ssize_t))
            with nogil:
                group(<const Py_ssize_t*>index_view.buf, n_rois, n_images,
                      <Py_ssize_t*>order_view.buf, <Py_ssize_t*>first_view.buf)
            PyBuffer_Release(&first_view)
        finally:
            PyBuffer_Release(&order_view)
    finally:
        PyBuffer_Release(&index_view)
    return roi_order, image_first


def all_within(indices, int low, int high):
    """Whether every element of a C-contiguous int32 array lies in [low, high).

    One pass, where NumPy's min() and max() cost ~1.5 us each on a small array.
    """
    cdef Py_buffer view
    cdef const int* values
    cdef Py_ssize_t i
    cdef bint inside = True
    get_buffer(indices, &view, PyBUF_FORMAT, indices.size, sizeof(int))
    try:
        if view.format[0] != b"i" or view.format[1] != 0:
            raise ValueError(f"internal error: indices of format {view.format!r}")
        values = <const int*>view.buf
        with nogil:
            for i in range(view.len // sizeof(int)):
                if values[i] < low or values[i] >= high:
                    inside = False
                    break
    finally:
        PyBuffer_Release(&view)
    return inside
