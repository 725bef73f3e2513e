# The RoIAlign kernels (roi_align, roi_align_backward). Private: _roi_align.py validates every
# argument and hands over private, canonical arrays (C-contiguous in their layout, native
# byte order, boxes in the features' dtype, batch indices checked), so nothing here
# re-checks them. Each entry point fills a KernelCall and runs its work items through
# _work_items.run_items.

from libc.string cimport memset

from roialign_cy._channel_blocks cimport (
    BlockItem,
    block_item,
    pack_block,
    unpack_block,
    unpack_roi,
)
from roialign_cy._kernel_call cimport (
    Geometry,
    KernelCall,
    kernel_call,
    make_geometry,
    n_block_items,
)
from roialign_cy._roi_align_pool cimport (
    pool_packed_roi,
    pool_roi,
    unpool_packed_roi,
    unpool_roi,
)
from roialign_cy._sample_table cimport floating
from roialign_cy._work_items cimport Scratch, ScratchSpec, run_items, scratch_spec


cdef bint forward_roi(const KernelCall* call, Scratch* scratch, Py_ssize_t k,
                      const floating* type_tag) noexcept nogil:
    """Per-RoI forward, work item k: every channel of RoI k."""
    cdef const Geometry* g = &call.g
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
    cdef Py_ssize_t j, k
    if call.image_first[it.image] == call.image_first[it.image + 1]:
        return True
    pack_block(<const floating*>call.values + it.image * g.image_stride, g, it.first_channel,
               it.n_channels, packed, call.block)
    for j in range(call.image_first[it.image], call.image_first[it.image + 1]):
        k = call.roi_order[j]
        if not pool_packed_roi(packed, <const floating*>call.boxes + 4 * k,
                               <floating>call.spatial_scale, g, &scratch.table, pooled,
                               call.max_mode, call.block):
            return False
        unpack_roi(pooled, <floating*>call.result + k * g.out_roi_stride, g, it.first_channel,
                   it.n_channels, call.block)
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
    cdef Py_ssize_t j, k
    if call.max_mode:
        image = <const floating*>call.features + it.image * g.image_stride
    for j in range(call.image_first[it.image], call.image_first[it.image + 1]):
        k = call.roi_order[j]
        if not unpool_roi(grad_image, <const floating*>call.values + k * g.out_roi_stride, image,
                          <const floating*>call.boxes + 4 * k, <floating>call.spatial_scale, g,
                          &scratch.table, call.max_mode, it.first_channel,
                          it.first_channel + it.n_channels):
            return False
    return True


cdef bint backward_block(const KernelCall* call, Scratch* scratch, Py_ssize_t item,
                         const floating* type_tag) noexcept nogil:
    """Packed average-mode backward: accumulate all the image's RoIs into a cache-resident
    packed block, then write it out once. Bit-identical to backward_share."""
    cdef const Geometry* g = &call.g
    cdef BlockItem it = block_item(item, g.channels, call.block)
    cdef floating* packed = <floating*>scratch.buffers[0]
    cdef floating* roi_grad = <floating*>scratch.buffers[1]
    cdef Py_ssize_t j, k
    if call.image_first[it.image] == call.image_first[it.image + 1]:
        return True  # an image without RoIs keeps its zero gradient
    memset(packed, 0, g.height * g.width * call.block * sizeof(floating))
    for j in range(call.image_first[it.image], call.image_first[it.image + 1]):
        k = call.roi_order[j]
        if not unpool_packed_roi(packed, <const floating*>call.values + k * g.out_roi_stride,
                                 roi_grad, <const floating*>call.boxes + 4 * k,
                                 <floating>call.spatial_scale, g, &scratch.table,
                                 it.first_channel, it.n_channels, call.block):
            return False
    unpack_block(packed, <floating*>call.result + it.image * g.image_stride, g, it.first_channel,
                 it.n_channels, call.block)
    return True


cdef Py_ssize_t run(const floating[:, :, :, ::1] values, const floating[:, ::1] boxes,
              const Py_ssize_t[::1] batch_index, const Py_ssize_t[::1] roi_order,
              const Py_ssize_t[::1] image_first, double spatial_scale, bint max_mode,
              const floating* features, floating* result, Geometry g,
              bint backward, bint packed, Py_ssize_t block, Py_ssize_t first_item,
              int n_threads):
    """Fill the KernelCall and run the work items of the chosen kernel, without the GIL."""
    cdef KernelCall call = kernel_call(g, &values[0, 0, 0, 0], result, features, &boxes[0, 0],
                                       batch_index, roi_order, image_first, spatial_scale, block)
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
            done = run_items(forward_roi[floating], &call, first_item, boxes.shape[0],
                             &spec, n_threads)
        elif not backward:
            done = run_items(forward_block[floating], &call, first_item, n_items,
                             &spec, n_threads)
        elif not packed:
            done = run_items(backward_share[floating], &call, first_item, n_items,
                             &spec, n_threads)
        else:
            done = run_items(backward_block[floating], &call, first_item, n_items,
                             &spec, n_threads)
    return done


def forward(const floating[:, :, :, ::1] features, bint channels_last,
            const floating[:, ::1] boxes, const Py_ssize_t[::1] batch_index,
            const Py_ssize_t[::1] roi_order, const Py_ssize_t[::1] image_first,
            double spatial_scale, Py_ssize_t pooled_height, Py_ssize_t pooled_width,
            Py_ssize_t sampling_ratio, bint aligned, bint max_mode, floating[:, :, :, ::1] out,
            bint packed, Py_ssize_t block, Py_ssize_t first_item, int n_threads):
    """RoIAlign forward into `out`, one time slice of it (see _work_items.run_items): the
    next item to run from first_item on, 0 when done, -1 when out of memory.

    features (N, C, H, W), or (N, H, W, C) when channels_last; out (K, C, PH, PW) or
    (K, PH, PW, C). Per RoI unless `packed`: then work items are (image, block of `block`
    channels), with roi_order/image_first grouping the RoIs by image.
    """
    cdef Geometry g = make_geometry(features.shape, channels_last, pooled_height,
                                    pooled_width, sampling_ratio, aligned)
    return run(features, boxes, batch_index, roi_order, image_first, spatial_scale, max_mode,
               <const floating*>NULL, &out[0, 0, 0, 0], g, False, packed, block, first_item,
               n_threads)


def backward(const floating[:, :, :, ::1] grad_output, bint channels_last,
             const floating[:, ::1] boxes, const Py_ssize_t[::1] batch_index,
             const Py_ssize_t[::1] roi_order, const Py_ssize_t[::1] image_first,
             double spatial_scale, Py_ssize_t pooled_height, Py_ssize_t pooled_width,
             Py_ssize_t sampling_ratio, bint aligned, bint max_mode,
             const floating[:, :, :, ::1] features, floating[:, :, :, ::1] grad_input,
             bint packed, Py_ssize_t block, Py_ssize_t first_item, int n_threads):
    """Gradient of roi_align w.r.t. the features, accumulated into zeroed `grad_input`, one
    time slice of it (returns as forward does).

    Work items are (image, block of `block` channels): no two threads write the same element,
    no atomics. `features` is only read in max mode (each bin's arg-max sample); `packed`
    (average mode only) accumulates in cache-resident channel blocks.
    """
    cdef Geometry g = make_geometry(grad_input.shape, channels_last, pooled_height,
                                    pooled_width, sampling_ratio, aligned)
    return run(grad_output, boxes, batch_index, roi_order, image_first, spatial_scale,
               max_mode, &features[0, 0, 0, 0] if features is not None else NULL,
               &grad_input[0, 0, 0, 0], g, True, packed and not max_mode,
               block, first_item, n_threads)


KERNELS = {"forward": forward, "backward": backward}
