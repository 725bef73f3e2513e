# Compiled kernels of roialign_cy. Private: the wrappers in _api.py validate every argument
# and hand over canonical arrays (C-contiguous in their layout, native byte order, boxes in
# the features' dtype, batch indices checked), so nothing here re-checks them.

from cython.parallel cimport parallel, prange
from libc.stdlib cimport free, malloc

import numpy as np

from roialign_cy._bilinear cimport (
    RoIGrid,
    SampleTable,
    build_sample_table,
    floating,
    four_taps,
    table_free,
    table_init,
)
from roialign_cy._openmp cimport ROIALIGN_HAVE_OPENMP, omp_get_max_threads

OPENMP_ENABLED = bool(ROIALIGN_HAVE_OPENMP)


def openmp_max_threads():
    """omp_get_max_threads(): the team size a parallel region gets by default (1 if serial)."""
    return omp_get_max_threads()


cdef inline void pool_plane(const floating* plane, floating* out_plane, Py_ssize_t bin_stride,
                            const SampleTable* table, floating count, bint max_mode,
                            double samples_per_bin) noexcept nogil:
    """Pool every bin of one RoI from one channel plane (channels-first layout)."""
    cdef Py_ssize_t b, s, first, last
    cdef const Py_ssize_t* offsets = table.corner_offsets
    cdef const floating* weights = <const floating*>table.corner_weights
    cdef floating acc, value
    for b in range(table.n_bins):
        first = table.bin_first[b]
        last = table.bin_first[b + 1]
        if max_mode:
            if first == last:
                acc = 0
            else:
                acc = four_taps(plane, &offsets[4 * first], &weights[4 * first])
                for s in range(first + 1, last):
                    value = four_taps(plane, &offsets[4 * s], &weights[4 * s])
                    if value > acc or value != value:  # NaN wins and stays
                        acc = value
                if last - first < samples_per_bin and acc < 0:  # a skipped sample is a 0 that takes part
                    acc = 0
        else:
            acc = 0
            for s in range(first, last):
                acc = acc + four_taps(plane, &offsets[4 * s], &weights[4 * s])
            acc = acc / count
        out_plane[b * bin_stride] = acc


cdef inline void pool_channels_last(const floating* image, floating* out_roi,
                                    Py_ssize_t channels, const SampleTable* table,
                                    floating count, bint max_mode,
                                    double samples_per_bin) noexcept nogil:
    """Pool every bin of one RoI over contiguous channels (channels-last layout).

    Loops bins -> samples -> channels so the innermost loop is contiguous and vectorizes;
    each channel still sums its samples in torchvision's order.
    """
    cdef Py_ssize_t b, s, c, first, last
    cdef const Py_ssize_t* offsets = table.corner_offsets
    cdef const floating* weights = <const floating*>table.corner_weights
    cdef const floating* p1
    cdef const floating* p2
    cdef const floating* p3
    cdef const floating* p4
    cdef floating w1, w2, w3, w4, value
    cdef floating* row
    for b in range(table.n_bins):
        row = out_roi + b * channels
        first = table.bin_first[b]
        last = table.bin_first[b + 1]
        for c in range(channels):
            row[c] = 0
        for s in range(first, last):
            p1 = image + offsets[4 * s + 0]
            p2 = image + offsets[4 * s + 1]
            p3 = image + offsets[4 * s + 2]
            p4 = image + offsets[4 * s + 3]
            w1 = weights[4 * s + 0]
            w2 = weights[4 * s + 1]
            w3 = weights[4 * s + 2]
            w4 = weights[4 * s + 3]
            if not max_mode:
                for c in range(channels):
                    row[c] = row[c] + (w1 * p1[c] + w2 * p2[c] + w3 * p3[c] + w4 * p4[c])
            elif s == first:
                for c in range(channels):
                    row[c] = w1 * p1[c] + w2 * p2[c] + w3 * p3[c] + w4 * p4[c]
            else:
                for c in range(channels):
                    value = w1 * p1[c] + w2 * p2[c] + w3 * p3[c] + w4 * p4[c]
                    if value > row[c] or value != value:
                        row[c] = value
        if not max_mode:
            for c in range(channels):
                row[c] = row[c] / count
        elif last - first < samples_per_bin:  # a skipped sample is a 0 that takes part
            for c in range(channels):
                if row[c] < 0:
                    row[c] = 0


cdef struct Geometry:
    # Shapes and element strides of one call, fixed for all its RoIs.
    Py_ssize_t channels, height, width, pooled_h, pooled_w, sampling_ratio
    Py_ssize_t image_stride, channel_stride, row_stride, col_stride
    Py_ssize_t out_roi_stride, out_channel_stride, out_bin_stride
    bint aligned, channels_last


cdef Geometry make_geometry(const Py_ssize_t* shape, bint channels_last, Py_ssize_t pooled_h,
                            Py_ssize_t pooled_w, Py_ssize_t sampling_ratio, bint aligned):
    """Strides of a C-contiguous (N, C, H, W) or (N, H, W, C) map and its pooled output."""
    cdef Geometry g
    g.pooled_h, g.pooled_w, g.sampling_ratio = pooled_h, pooled_w, sampling_ratio
    g.aligned, g.channels_last = aligned, channels_last
    if channels_last:
        g.height, g.width, g.channels = shape[1], shape[2], shape[3]
        g.channel_stride, g.row_stride, g.col_stride = 1, g.width * g.channels, g.channels
        g.out_channel_stride, g.out_bin_stride = 1, g.channels
    else:
        g.channels, g.height, g.width = shape[1], shape[2], shape[3]
        g.channel_stride, g.row_stride, g.col_stride = g.height * g.width, g.width, 1
        g.out_channel_stride, g.out_bin_stride = pooled_h * pooled_w, 1
    g.image_stride = g.channels * g.height * g.width
    g.out_roi_stride = g.channels * pooled_h * pooled_w
    return g


cdef inline bint pool_roi(const floating* image, const floating* box, floating spatial_scale,
                          floating* out_roi, const Geometry* g, SampleTable* table,
                          bint max_mode) noexcept nogil:
    """Build one RoI's sample table, then pool every channel with it. False when out of memory."""
    cdef RoIGrid grid
    cdef Py_ssize_t c
    if not build_sample_table(table, box, spatial_scale, g.aligned, g.pooled_h, g.pooled_w,
                              g.sampling_ratio, g.height, g.width, g.row_stride,
                              g.col_stride, &grid):
        return False
    if g.channels_last:
        pool_channels_last(image, out_roi, g.channels, table, <floating>grid.count, max_mode,
                           grid.grid_h * grid.grid_w)
    else:
        for c in range(g.channels):
            pool_plane(image + c * g.channel_stride, out_roi + c * g.out_channel_stride,
                       g.out_bin_stride, table, <floating>grid.count, max_mode,
                       grid.grid_h * grid.grid_w)
    return True


def roi_align_forward(const floating[:, :, :, ::1] features, bint channels_last,
                      const Py_ssize_t[::1] batch_index, const floating[:, ::1] boxes,
                      double spatial_scale, Py_ssize_t pooled_height, Py_ssize_t pooled_width,
                      Py_ssize_t sampling_ratio, bint aligned, bint max_mode,
                      floating[:, :, :, ::1] out, int n_threads):
    """RoIAlign forward into `out`, one RoI per loop iteration, RoIs spread over threads.

    features is (N, C, H, W), or (N, H, W, C) when channels_last; out is (K, C, PH, PW) or
    (K, PH, PW, C). Returns False when a sample table could not be allocated.
    """
    cdef Geometry g = make_geometry(features.shape, channels_last, pooled_height,
                                    pooled_width, sampling_ratio, aligned)
    cdef Py_ssize_t k
    cdef SampleTable* table = NULL
    cdef int failed = 0
    cdef int* failed_flag = &failed  # written through a pointer: shared, not lastprivate
    cdef floating scale = <floating>spatial_scale
    cdef const floating* image = &features[0, 0, 0, 0]
    cdef floating* pooled = &out[0, 0, 0, 0]

    with nogil, parallel(num_threads=n_threads, use_threads_if=n_threads > 1):
        table = <SampleTable*>malloc(sizeof(SampleTable))
        if table == NULL or not table_init(table, pooled_height, pooled_width):
            failed_flag[0] = 1
        for k in prange(boxes.shape[0], schedule='dynamic'):
            if failed_flag[0]:
                continue
            if not pool_roi(image + batch_index[k] * g.image_stride, &boxes[k, 0], scale,
                            pooled + k * g.out_roi_stride, &g, table, max_mode):
                failed_flag[0] = 1
        if table != NULL:
            table_free(table)
            free(table)
    return not failed
