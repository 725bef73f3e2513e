# The quantized bins of RoIPool (Fast R-CNN) and position-sensitive RoIPool (R-FCN), as
# torchvision computes them: box corners rounded to feature pixels, bins
# [floor(p * bin), ceil((p + 1) * bin)) offset by the start and clipped to the map. The two
# differ in two details, both torchvision's: roi_pool's RoI size is inclusive (+1) and its
# bins clip to [0, size]; ps_roi_pool's is not, and its bins clip to [0, size - 1].

from libc.math cimport ceil, floor, fmax, fmin, round

from roialign_cy._kernel_call cimport Geometry
from roialign_cy._sample_table cimport floating


cdef enum:
    # roi_bins' `inclusive`, named for the operator whose bins it gives
    PS_ROI_POOL_BINS = 0
    ROI_POOL_BINS = 1


cdef struct PoolBins:
    # The clipped pixel ranges of every bin of one RoI: rows [y_start[ph], y_end[ph]), ...
    Py_ssize_t* y_start
    Py_ssize_t* y_end
    Py_ssize_t* x_start
    Py_ssize_t* x_end


cdef inline PoolBins bins_in(void* buffer, Py_ssize_t pooled_h, Py_ssize_t pooled_w) noexcept nogil:
    """The bin ranges laid out in a scratch buffer of 2 * (PH + PW) Py_ssize_t."""
    cdef PoolBins bins
    bins.y_start = <Py_ssize_t*>buffer
    bins.y_end = bins.y_start + pooled_h
    bins.x_start = bins.y_end + pooled_h
    bins.x_end = bins.x_start + pooled_w
    return bins


cdef inline void axis_bins(floating first, floating last, floating spatial_scale,
                           Py_ssize_t n_bins, Py_ssize_t size, bint inclusive,
                           Py_ssize_t* bin_start, Py_ssize_t* bin_end) noexcept nogil:
    """torchvision's bins along one axis: roi_pool's when `inclusive`, else ps_roi_pool's.

    The products with spatial_scale and the bin size are rounded in type T as torchvision
    computes them; the rest in double, so that huge boxes clip instead of overflowing an int
    (torchvision's int arithmetic is undefined there).
    """
    cdef double start = round(first * spatial_scale)
    cdef double length = fmax(round(last * spatial_scale) - start + (1.0 if inclusive else 0.0),
                              1.0)
    cdef floating bin_size = <floating>length / <floating>n_bins
    cdef double high = <double>size if inclusive else <double>(size - 1)
    cdef Py_ssize_t p
    for p in range(n_bins):
        bin_start[p] = <Py_ssize_t>fmin(fmax(floor(<floating>p * bin_size) + start, 0.0), high)
        bin_end[p] = <Py_ssize_t>fmin(fmax(ceil(<floating>(p + 1) * bin_size) + start, 0.0), high)


cdef inline void roi_bins(PoolBins* bins, const floating* box, floating spatial_scale,
                          const Geometry* g, bint inclusive) noexcept nogil:
    """The bins of box = (x1, y1, x2, y2) on the map of `g`."""
    axis_bins(box[1], box[3], spatial_scale, g.pooled_h, g.height, inclusive,
              bins.y_start, bins.y_end)
    axis_bins(box[0], box[2], spatial_scale, g.pooled_w, g.width, inclusive,
              bins.x_start, bins.x_end)
