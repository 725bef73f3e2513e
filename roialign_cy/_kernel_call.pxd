# What every kernel's work items see of one call: its Geometry (shapes and element strides)
# and a KernelCall (the arrays and parameters), both filled once before any thread starts and
# read-only while the team runs. Shared by every operator's kernels.

from libc.stdint cimport int32_t

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


cdef struct KernelCall:
    # One kernel call, as every work item sees it. Arrays are typed T (float or double) by
    # the item functions that read them.
    Geometry g
    const void* values             # features (forward) or grad_output (backward)
    void* result                   # the pooled output (forward) or grad_input (backward)
    const void* features           # backward: the forward's features where read, else NULL
    const void* boxes              # (K, 4) x1, y1, x2, y2
    const Py_ssize_t* batch_index  # (K,), checked in [0, N)
    const Py_ssize_t* roi_order    # RoIs grouped by image (stable) ...
    const Py_ssize_t* image_first  # ... image b's are roi_order[image_first[b]:image_first[b + 1]]
    int32_t* argmax                # roi_pool's arg-max indices y * W + x (out or in), or NULL
    double spatial_scale
    bint max_mode
    Py_ssize_t block               # channels per (image, channel block) work item


cdef inline Py_ssize_t roi_of(const KernelCall* call, Py_ssize_t item) noexcept nogil:
    """The RoI of a per-RoI forward's work item: the item-th of roi_order when the plan gave
    one (the RoIs by locality, _plan.LOCALITY_BYTES), else RoI `item`. Each RoI writes only
    its own output, so the order changes no number."""
    return item if call.roi_order == NULL else call.roi_order[item]


cdef inline const Py_ssize_t* indices(const Py_ssize_t[::1] array) noexcept:
    """The first element of an index array, NULL for None or an empty one."""
    return &array[0] if array is not None and array.shape[0] > 0 else NULL


cdef inline KernelCall kernel_call_at(Geometry g, const void* values, void* result,
                                      const void* features, const void* boxes,
                                      const Py_ssize_t* batch_index, const Py_ssize_t* roi_order,
                                      const Py_ssize_t* image_first, double spatial_scale,
                                      Py_ssize_t block) noexcept nogil:
    """A KernelCall without max_mode or arg-max indices (the operators set theirs), from
    pointers (NULL: no such array)."""
    cdef KernelCall call
    call.g = g
    call.values, call.result, call.features, call.boxes = values, result, features, boxes
    call.batch_index, call.roi_order, call.image_first = batch_index, roi_order, image_first
    call.argmax = NULL
    call.spatial_scale, call.max_mode, call.block = spatial_scale, False, block
    return call


cdef inline KernelCall kernel_call(Geometry g, const void* values, void* result,
                                   const void* features, const void* boxes,
                                   const Py_ssize_t[::1] batch_index,
                                   const Py_ssize_t[::1] roi_order,
                                   const Py_ssize_t[::1] image_first, double spatial_scale,
                                   Py_ssize_t block) noexcept:
    """kernel_call_at with the index arrays as typed memoryviews."""
    return kernel_call_at(g, values, result, features, boxes, indices(batch_index),
                          indices(roi_order), indices(image_first), spatial_scale, block)


cdef inline Py_ssize_t n_block_items(const Geometry* g, Py_ssize_t block) noexcept nogil:
    """Work items of a loop over (image, block of `block` channels) pairs."""
    return g.n_images * ((g.channels + block - 1) // block) if block > 0 else g.n_images
