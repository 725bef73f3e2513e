# The sampling geometry of one box, as the kernels compute it, for roialign_cy.plot: not a
# kernel (no threads, no AVX2 twin), a window onto the inline code the kernels run.
#
# RoIAlign: roi_grid, sample_coordinate, inside, push_sample and sample_taps from
# _sample_table.pxd, the functions every RoIAlign kernel builds its sample table with, here
# walked sample by sample (torchvision's loop, as fill_axis walks a small grid) and keeping
# the samples outside the map too, which the kernels skip: they contribute 0. RoIPool:
# roi_bins from _pool_bins.pxd on a make_geometry map, as the RoIPool kernels call it.
# Private: plot.py checks every argument and bounds the grid before calling.

from libc.stdlib cimport free

from roialign_cy._kernel_call cimport Geometry, make_geometry
from roialign_cy._pool_bins cimport ROI_POOL_BINS, PoolBins, bins_in, roi_bins
from roialign_cy._sample_table cimport (
    AxisSample,
    RoIGrid,
    floating,
    inside,
    push_sample,
    roi_grid,
    sample_coordinate,
    sample_taps,
)

import numpy as np


def roi_geometry(const floating[::1] box, double spatial_scale, bint aligned,
                 Py_ssize_t pooled_h, Py_ssize_t pooled_w, Py_ssize_t sampling_ratio):
    """torchvision's RoI geometry of box (x1, y1, x2, y2) in its dtype: roi_grid's fields.

    A dict: start_y, start_x (the RoI's corner in feature-map coordinates), bin_h, bin_w,
    grid_h, grid_w (samples per bin along each axis) and count (the bin's divisor).
    """
    cdef RoIGrid g = roi_grid(&box[0], <floating>spatial_scale, aligned, pooled_h, pooled_w,
                              sampling_ratio)
    return {"start_y": g.start_y, "start_x": g.start_x, "bin_h": g.bin_h, "bin_w": g.bin_w,
            "grid_h": g.grid_h, "grid_w": g.grid_w, "count": g.count}


cdef int axis_samples(floating start, floating bin_size, Py_ssize_t n_bins, Py_ssize_t grid,
                      Py_ssize_t size, Py_ssize_t stride, floating[:, ::1] coordinate,
                      Py_ssize_t[:, ::1] entry, AxisSample** samples,
                      Py_ssize_t* capacity) except -1:
    """Every sample of one axis, bin by bin: its coordinate, and for the inside ones the
    index of its clamped entry in `samples` (-1 outside); the number of entries."""
    cdef Py_ssize_t p, i, kept = 0
    cdef floating y
    for p in range(n_bins):
        for i in range(grid):
            y = sample_coordinate(start, bin_size, p, <double>i, <double>grid)
            coordinate[p, i] = y
            entry[p, i] = -1
            if inside(y, size):
                if not push_sample(samples, capacity, kept, y, size, stride, 1.0):
                    raise MemoryError("no memory for the samples of one axis")
                entry[p, i] = kept
                kept += 1
    return kept


def roi_align_samples(const floating[::1] box, double spatial_scale, bint aligned,
                      Py_ssize_t pooled_h, Py_ssize_t pooled_w, Py_ssize_t sampling_ratio,
                      Py_ssize_t height, Py_ssize_t width):
    """Every sampling point of box (x1, y1, x2, y2) on a height x width map, and its taps.

    The grid must be finite (the caller bounds grid_h * grid_w * pooled_h * pooled_w).
    Returns a dict: y (PH, grid_h) and x (PW, grid_w), the sample coordinates (sample
    (ph, pw, iy, ix) is at (y[ph, iy], x[pw, ix])); inside (PH, PW, grid_h, grid_w), whether
    it lies in [-1, H] x [-1, W] (outside it contributes 0 and nothing is read); and
    tap_rows, tap_cols, tap_weights (PH, PW, grid_h, grid_w, 4), its 4 bilinear taps in
    torchvision's order (low-low, low-high, high-low, high-high), -1 and 0 outside.
    """
    cdef RoIGrid g = roi_grid(&box[0], <floating>spatial_scale, aligned, pooled_h, pooled_w,
                              sampling_ratio)
    cdef Py_ssize_t grid_h = <Py_ssize_t>g.grid_h, grid_w = <Py_ssize_t>g.grid_w
    cdef Py_ssize_t ph, pw, iy, ix, t, offset
    cdef Py_ssize_t y_capacity = 0, x_capacity = 0
    cdef AxisSample* y_samples = NULL
    cdef AxisSample* x_samples = NULL
    cdef Py_ssize_t offsets[4]
    cdef floating weights[4]
    dtype = np.float32 if floating is float else np.float64
    y = np.empty((pooled_h, grid_h), dtype)
    x = np.empty((pooled_w, grid_w), dtype)
    y_entry = np.empty((pooled_h, grid_h), np.intp)
    x_entry = np.empty((pooled_w, grid_w), np.intp)
    shape = (pooled_h, pooled_w, grid_h, grid_w)
    inside_map = np.zeros(shape, np.uint8)
    rows = np.full(shape + (4,), -1, np.intp)
    cols = np.full(shape + (4,), -1, np.intp)
    tap_weights = np.zeros(shape + (4,), dtype)
    cdef floating[:, ::1] y_coordinate = y
    cdef floating[:, ::1] x_coordinate = x
    cdef Py_ssize_t[:, ::1] y_at = y_entry
    cdef Py_ssize_t[:, ::1] x_at = x_entry
    cdef unsigned char[:, :, :, ::1] is_inside = inside_map
    cdef Py_ssize_t[:, :, :, :, ::1] row = rows
    cdef Py_ssize_t[:, :, :, :, ::1] col = cols
    cdef floating[:, :, :, :, ::1] weight = tap_weights
    try:
        # Offsets as the kernels form them (row stride W, column stride 1), read back below.
        axis_samples(<floating>g.start_y, <floating>g.bin_h, pooled_h, grid_h, height, width,
                     y_coordinate, y_at, &y_samples, &y_capacity)
        axis_samples(<floating>g.start_x, <floating>g.bin_w, pooled_w, grid_w, width, 1,
                     x_coordinate, x_at, &x_samples, &x_capacity)
        for ph in range(pooled_h):
            for pw in range(pooled_w):
                for iy in range(grid_h):
                    if y_at[ph, iy] < 0:
                        continue
                    for ix in range(grid_w):
                        if x_at[pw, ix] < 0:
                            continue
                        sample_taps(&y_samples[y_at[ph, iy]], &x_samples[x_at[pw, ix]], False,
                                    offsets, weights)
                        is_inside[ph, pw, iy, ix] = 1
                        for t in range(4):
                            offset = offsets[t]
                            row[ph, pw, iy, ix, t] = offset // width
                            col[ph, pw, iy, ix, t] = offset % width
                            weight[ph, pw, iy, ix, t] = weights[t]
    finally:
        free(y_samples)
        free(x_samples)
    return {"y": y, "x": x, "inside": inside_map.astype(bool), "tap_rows": rows,
            "tap_cols": cols, "tap_weights": tap_weights}


def roi_pool_bins(const floating[::1] box, double spatial_scale, Py_ssize_t pooled_h,
                  Py_ssize_t pooled_w, Py_ssize_t height, Py_ssize_t width):
    """RoIPool's bins of box (x1, y1, x2, y2) on a height x width map, as its kernels form
    them: (y_start, y_end, x_start, x_end), bin (ph, pw) pooling rows [y_start[ph],
    y_end[ph]) and columns [x_start[pw], x_end[pw]) (empty when end <= start)."""
    cdef Py_ssize_t shape[4]
    shape[0], shape[1], shape[2], shape[3] = 1, 1, height, width
    cdef Geometry g = make_geometry(shape, False, pooled_h, pooled_w, 0, False)
    # The kernels' scratch layout: y_start, y_end (PH each), x_start, x_end (PW each).
    buffer = np.empty(2 * (pooled_h + pooled_w), np.intp)
    cdef Py_ssize_t[::1] scratch = buffer
    cdef PoolBins bins = bins_in(&scratch[0], pooled_h, pooled_w)
    roi_bins(&bins, &box[0], <floating>spatial_scale, &g, ROI_POOL_BINS)
    return tuple(np.split(buffer, [pooled_h, 2 * pooled_h, 2 * pooled_h + pooled_w]))
