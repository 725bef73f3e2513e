# Shapes and element strides of one kernel call, shared by every operator's kernels.

cdef struct Geometry:
    # Shapes and element strides of one call, fixed for all its RoIs. Read once, from the
    # call's private views, before any thread starts.
    Py_ssize_t n_images, channels, height, width, pooled_h, pooled_w, sampling_ratio
    Py_ssize_t image_stride, channel_stride, row_stride, col_stride
    Py_ssize_t out_roi_stride, out_channel_stride, out_bin_stride
    bint aligned, channels_last


cdef inline Geometry make_geometry(const Py_ssize_t* shape, bint channels_last,
                                   Py_ssize_t pooled_h, Py_ssize_t pooled_w,
                                   Py_ssize_t sampling_ratio, bint aligned) noexcept nogil:
    """Strides of a C-contiguous (N, C, H, W) or (N, H, W, C) map and its pooled output."""
    cdef Geometry g
    g.n_images = shape[0]
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
