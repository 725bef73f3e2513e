# Box rows checked and converted in one compiled pass: the Python wrapper calls this on
# every call, so it must cost microseconds, not a dozen NumPy reductions.

from libc.math cimport floor, isfinite

from roialign_cy._bilinear cimport floating

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


cdef inline BoxProblem split_row(const box_real* row, Py_ssize_t n_images,
                                 Py_ssize_t* batch_index, floating* coords) noexcept nogil:
    """Check one row [batch_index, x1, y1, x2, y2] and write its two parts."""
    cdef Py_ssize_t i
    cdef floating value
    # Read in double: a float32 row widens exactly, so the checks see the same values.
    cdef double index = row[0]
    for i in range(4):
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


def split_rows(const box_real[:, ::1] rows, Py_ssize_t n_images, Py_ssize_t[::1] batch_index,
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


def group_by_image(const Py_ssize_t[::1] batch_index, Py_ssize_t[::1] roi_order,
                   Py_ssize_t[::1] image_first):
    """Stable counting sort of the RoIs by batch index (each in [0, N), already checked).

    Writes roi_order (K,), the RoIs image by image in their original order, and image_first
    (N + 1,), where each image's RoIs start in roi_order (image_first[N] = K).
    """
    cdef Py_ssize_t n_images = image_first.shape[0] - 1
    cdef Py_ssize_t k, b, start, total = 0
    with nogil:
        for b in range(n_images + 1):
            image_first[b] = 0
        for k in range(batch_index.shape[0]):
            image_first[batch_index[k] + 1] += 1      # image_first[b + 1] = count of image b
        for b in range(n_images):                     # ... = where image b starts
            start = total
            total = total + image_first[b + 1]
            image_first[b + 1] = start
        for k in range(batch_index.shape[0]):         # ... = where image b ends = b + 1 starts
            b = batch_index[k] + 1
            roi_order[image_first[b]] = k
            image_first[b] += 1
