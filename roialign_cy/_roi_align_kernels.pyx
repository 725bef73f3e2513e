# The RoIAlign kernels (roi_align, roi_align_backward). Private: _roi_align.py validates every
# argument and hands over private, canonical arrays (C-contiguous in their layout, native
# byte order, boxes in the features' dtype, batch indices checked), so nothing here
# re-checks their values; the entry points hold them as raw buffers and check only that
# their types and shapes agree. Each fills a KernelCall and runs its work items through
# _work_items.run_items.

from libc.string cimport memset

from roialign_cy._channel_blocks cimport (
    BlockItem,
    block_item,
    pack_block,
    unpack_block,
    unpack_roi,
)
from roialign_cy._buffers cimport HeldBuffers, check_length, hold, release
from roialign_cy._kernel_call cimport (
    Geometry,
    KernelCall,
    kernel_call_at,
    make_geometry,
    n_block_items,
    roi_of,
)
from roialign_cy._roi_align_pool cimport (
    pool_packed_roi,
    pool_roi,
    unpool_packed_roi,
    unpool_roi,
)
from roialign_cy._sample_table cimport floating
from roialign_cy._work_items cimport (
    Scratch,
    ScratchSpec,
    pause_at,
    paused_list,
    resume_from,
    run_items,
    scratch_spec,
)


cdef bint forward_roi(const KernelCall* call, Scratch* scratch, Py_ssize_t item,
                      const floating* type_tag) noexcept nogil:
    """Per-RoI forward: every channel of the item's RoI k (roi_of)."""
    cdef const Geometry* g = &call.g
    cdef Py_ssize_t k = roi_of(call, item)
    return pool_roi(<const floating*>call.values + call.batch_index[k] * g.image_stride,
                    <const floating*>call.boxes + 4 * k, <floating>call.spatial_scale,
                    <floating*>call.result + k * g.out_roi_stride, g, &scratch.table,
                    call.max_mode)


cdef bint forward_block(const KernelCall* call, Scratch* scratch, Py_ssize_t item,
                        const floating* type_tag) noexcept nogil:
    """Packed forward: pack one channel block of one image, pool all its RoIs from it.

    Same numbers as forward_roi, bit for bit: each output element still sums its samples
    in torchvision's order.
    """
    cdef const Geometry* g = &call.g
    cdef BlockItem it = block_item(item, g.channels, call.block)
    cdef floating* packed = <floating*>scratch.buffers[0]
    cdef floating* pooled = <floating*>scratch.buffers[1]
    cdef Py_ssize_t last = call.image_first[it.image + 1]
    cdef Py_ssize_t j, k
    if call.image_first[it.image] == last:
        return True
    pack_block(<const floating*>call.values + it.image * g.image_stride, g, it.first_channel,
               it.n_channels, packed, call.block)
    for j in range(resume_from(scratch, call.image_first[it.image]), last):
        k = call.roi_order[j]
        if not pool_packed_roi(packed, <const floating*>call.boxes + 4 * k,
                               <floating>call.spatial_scale, g, &scratch.table, pooled,
                               call.max_mode, call.block):
            return False
        unpack_roi(pooled, <floating*>call.result + k * g.out_roi_stride, g, it.first_channel,
                   it.n_channels, call.block)
        if pause_at(scratch, j + 1, last):
            break
    return True


cdef bint backward_share(const KernelCall* call, Scratch* scratch, Py_ssize_t item,
                         const floating* type_tag) noexcept nogil:
    """Per-RoI backward: the gradient of one channel block of one image, from all its RoIs.

    Items own disjoint elements, and each element sums its contributions in torchvision's
    order (RoIs ascending, then bins, samples, taps): deterministic for any thread count.
    """
    cdef const Geometry* g = &call.g
    cdef BlockItem it = block_item(item, g.channels, call.block)
    cdef floating* grad_image = <floating*>call.result + it.image * g.image_stride
    cdef const floating* image = NULL
    cdef Py_ssize_t last = call.image_first[it.image + 1]
    cdef Py_ssize_t j, k
    if call.max_mode:
        image = <const floating*>call.features + it.image * g.image_stride
    for j in range(resume_from(scratch, call.image_first[it.image]), last):
        k = call.roi_order[j]
        if not unpool_roi(grad_image, <const floating*>call.values + k * g.out_roi_stride, image,
                          <const floating*>call.boxes + 4 * k, <floating>call.spatial_scale, g,
                          &scratch.table, call.max_mode, it.first_channel,
                          it.first_channel + it.n_channels):
            return False
        if pause_at(scratch, j + 1, last):
            break
    return True


cdef bint backward_block(const KernelCall* call, Scratch* scratch, Py_ssize_t item,
                         const floating* type_tag) noexcept nogil:
    """Packed average-mode backward: accumulate all the image's RoIs into a cache-resident
    packed block, then write it out once. Bit-identical to backward_share."""
    cdef const Geometry* g = &call.g
    cdef BlockItem it = block_item(item, g.channels, call.block)
    cdef floating* packed = <floating*>scratch.buffers[0]
    cdef floating* roi_grad = <floating*>scratch.buffers[1]
    cdef floating* grad_image = <floating*>call.result + it.image * g.image_stride
    cdef Py_ssize_t last = call.image_first[it.image + 1]
    cdef Py_ssize_t j, k
    if call.image_first[it.image] == last:
        return True  # an image without RoIs keeps its zero gradient
    if scratch.resuming:  # the sums so far, saved when the item paused (exact copies)
        pack_block(grad_image, g, it.first_channel, it.n_channels, packed, call.block)
    else:
        memset(packed, 0, g.height * g.width * call.block * sizeof(floating))
    for j in range(resume_from(scratch, call.image_first[it.image]), last):
        k = call.roi_order[j]
        if not unpool_packed_roi(packed, <const floating*>call.values + k * g.out_roi_stride,
                                 roi_grad, <const floating*>call.boxes + 4 * k,
                                 <floating>call.spatial_scale, g, &scratch.table,
                                 it.first_channel, it.n_channels, call.block):
            return False
        if pause_at(scratch, j + 1, last):
            break
    unpack_block(packed, grad_image, g, it.first_channel, it.n_channels, call.block)
    return True


cdef Py_ssize_t run(const floating* values, const floating* boxes, Py_ssize_t n_rois,
                    const Py_ssize_t* batch_index, const Py_ssize_t* roi_order,
                    const Py_ssize_t* image_first, double spatial_scale, bint max_mode,
                    const floating* features, floating* result, Geometry g,
                    bint backward, bint packed, Py_ssize_t block, Py_ssize_t* paused,
                    Py_ssize_t first_item, int n_threads) noexcept:
    """Fill the KernelCall and run the work items of the chosen kernel, without the GIL."""
    cdef KernelCall call = kernel_call_at(g, values, result, features, boxes, batch_index,
                                          roi_order, image_first, spatial_scale, block)
    cdef ScratchSpec spec
    cdef Py_ssize_t n_bins = g.pooled_h * g.pooled_w
    cdef Py_ssize_t n_items = n_block_items(&g, block)
    cdef Py_ssize_t done
    call.max_mode = max_mode
    if packed:  # a block of the map and one RoI's pooled block per thread
        spec = scratch_spec(g.pooled_h, g.pooled_w, g.height * g.width * block * sizeof(floating),
                            n_bins * block * sizeof(floating))
    else:
        spec = scratch_spec(g.pooled_h, g.pooled_w, 0, 0)
    with nogil:
        if not backward and not packed:
            done = run_items(forward_roi[floating], &call, first_item, n_rois, &spec, n_threads)
        elif not backward:
            done = run_items(forward_block[floating], &call, first_item, n_items,
                             &spec, n_threads, paused)
        elif not packed:
            done = run_items(backward_share[floating], &call, first_item, n_items,
                             &spec, n_threads, paused)
        else:
            done = run_items(backward_block[floating], &call, first_item, n_items,
                             &spec, n_threads, paused)
    return done


cdef Py_ssize_t enter(object values, bint channels_last, object boxes, object batch_index,
                      object roi_order, object image_first, double spatial_scale,
                      Py_ssize_t pooled_height, Py_ssize_t pooled_width,
                      Py_ssize_t sampling_ratio, bint aligned, bint max_mode, object features,
                      floating[:, :, :, ::1] result, bint backward, bint packed,
                      Py_ssize_t block, Py_ssize_t[::1] paused, Py_ssize_t first_item,
                      int n_threads) except -2:
    """Hold the call's arrays as raw buffers (_buffers), check that they agree with the
    result's shape, and run. `result`, the one typed memoryview, picks the float type."""
    cdef HeldBuffers held
    cdef const char* real = b"f" if floating is float else b"d"
    cdef Py_buffer* view
    cdef const Py_ssize_t* map_shape = &result.shape[0]  # backward: the features' shape
    cdef const Py_ssize_t* pooled_shape  # (K, C, PH, PW) or (K, PH, PW, C)
    cdef Py_ssize_t expected[4]
    cdef Py_ssize_t n_rois, n_images, i
    cdef const floating* values_at
    cdef const floating* boxes_at
    cdef const floating* features_at = NULL
    cdef const Py_ssize_t* batch_index_at
    cdef const Py_ssize_t* roi_order_at = NULL
    cdef const Py_ssize_t* image_first_at = NULL
    cdef Geometry g
    held.n = 0
    try:
        view = hold(&held, values, 4, sizeof(floating), real, False)
        values_at = <const floating*>view.buf
        pooled_shape = &result.shape[0]
        if backward:
            pooled_shape = view.shape
        else:
            map_shape = view.shape
        n_rois = view.shape[0] if backward else result.shape[0]
        n_images = map_shape[0]
        view = hold(&held, boxes, 2, sizeof(floating), real, False)
        check_length(view, 0, n_rois, "boxes")
        check_length(view, 1, 4, "boxes")
        boxes_at = <const floating*>view.buf
        view = hold(&held, batch_index, 1, sizeof(Py_ssize_t), b"ilqn", False)
        check_length(view, 0, n_rois, "batch_index")
        batch_index_at = <const Py_ssize_t*>view.buf
        if roi_order is not None:
            view = hold(&held, roi_order, 1, sizeof(Py_ssize_t), b"ilqn", False)
            check_length(view, 0, n_rois, "roi_order")
            roi_order_at = <const Py_ssize_t*>view.buf
        if image_first is not None:
            view = hold(&held, image_first, 1, sizeof(Py_ssize_t), b"ilqn", False)
            check_length(view, 0, n_images + 1, "image_first")
            image_first_at = <const Py_ssize_t*>view.buf
        if features is not None:
            view = hold(&held, features, 4, sizeof(floating), real, False)
            for i in range(4):
                check_length(view, i, map_shape[i], "features")
            features_at = <const floating*>view.buf
        g = make_geometry(map_shape, channels_last, pooled_height, pooled_width,
                          sampling_ratio, aligned)
        expected[0], expected[1] = n_rois, pooled_height if channels_last else g.channels
        expected[2] = pooled_width if channels_last else pooled_height
        expected[3] = g.channels if channels_last else pooled_width
        for i in range(4):
            if pooled_shape[i] != expected[i]:
                raise ValueError("internal error: the pooled array's shape does not match "
                                 "the features and the output size")
        return run(values_at, boxes_at, n_rois, batch_index_at, roi_order_at, image_first_at,
                   spatial_scale, max_mode, features_at, &result[0, 0, 0, 0], g, backward,
                   packed, block, paused_list(paused, n_threads), first_item, n_threads)
    finally:
        release(&held)


def forward(features, bint channels_last, boxes, batch_index, roi_order, image_first,
            double spatial_scale, Py_ssize_t pooled_height, Py_ssize_t pooled_width,
            Py_ssize_t sampling_ratio, bint aligned, bint max_mode, floating[:, :, :, ::1] out,
            bint packed, Py_ssize_t block, Py_ssize_t[::1] paused, Py_ssize_t first_item,
            int n_threads):
    """RoIAlign forward into `out`, one time slice of it (see _work_items.run_items): the
    next item to run from first_item on, 0 when done, -1 when out of memory.

    features (N, C, H, W), or (N, H, W, C) when channels_last, and boxes (K, 4) of out's
    float type; batch_index (K,) intp; out (K, C, PH, PW) or (K, PH, PW, C). Per RoI unless
    `packed`: then work items are (image, block of `block` channels), with
    roi_order/image_first grouping the RoIs by image. Per RoI, roi_order (image_first None)
    is the order to pool the RoIs in, or None for 0..K-1. All C-contiguous. paused: the
    call's paused list (run_items), kept between its slices; None where items are RoIs.
    """
    return enter(features, channels_last, boxes, batch_index, roi_order, image_first,
                 spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned, max_mode,
                 None, out, False, packed, block, paused, first_item, n_threads)


def backward(grad_output, bint channels_last, boxes, batch_index, roi_order, image_first,
             double spatial_scale, Py_ssize_t pooled_height, Py_ssize_t pooled_width,
             Py_ssize_t sampling_ratio, bint aligned, bint max_mode, features,
             floating[:, :, :, ::1] grad_input, bint packed, Py_ssize_t block,
             Py_ssize_t[::1] paused, Py_ssize_t first_item, int n_threads):
    """Gradient of roi_align w.r.t. the features, accumulated into zeroed `grad_input`, one
    time slice of it (returns as forward does).

    Work items are (image, block of `block` channels): no two threads write the same element,
    no atomics. `features` (grad_input's shape) is only read in max mode (each bin's arg-max
    sample), else None; `packed` (average mode only) accumulates in cache-resident channel
    blocks. Arrays as in forward.
    """
    return enter(grad_output, channels_last, boxes, batch_index, roi_order, image_first,
                 spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned, max_mode,
                 features, grad_input, True, packed and not max_mode, block, paused,
                 first_item, n_threads)


KERNELS = {"forward": forward, "backward": backward}
