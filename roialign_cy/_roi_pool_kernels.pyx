# The RoIPool kernels (roi_pool, roi_pool_backward): the quantized baseline RoIAlign replaces,
# with torchvision's exact semantics: box corners rounded to feature pixels, an inclusive +1
# size, bins [floor(p * bin), ceil((p + 1) * bin)) clipped to the map, an empty bin gives 0,
# the first maximum wins (strict `>` from -FLT_MAX, so NaN never wins). Private:
# _roi_pool.py hands over private, canonical arrays. Each entry point fills a KernelCall and
# runs its work items through _work_items.run_items.

from libc.float cimport FLT_MAX
from libc.stdint cimport int32_t
from libc.string cimport memset

from roialign_cy._channel_blocks cimport (
    BlockItem,
    block_item,
    pack_block,
    pack_roi,
    unpack_block,
    unpack_roi,
)
from roialign_cy._kernel_call cimport (
    Geometry,
    KernelCall,
    kernel_call,
    make_geometry,
    n_block_items,
    roi_of,
)
from roialign_cy._channel_gather cimport bin_max
from roialign_cy._pool_bins cimport ROI_POOL_BINS, PoolBins, bins_in, roi_bins
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


cdef inline Py_ssize_t argmax_in_bin(const floating* plane, const Geometry* g,
                                     const PoolBins* bins, Py_ssize_t ph, Py_ssize_t pw,
                                     floating* best_value) noexcept nogil:
    """Offset of the bin's first maximum in one channel plane, -1 if none (empty bin -> 0)."""
    cdef Py_ssize_t y, x, offset, best = -1
    cdef floating value
    if bins.y_end[ph] <= bins.y_start[ph] or bins.x_end[pw] <= bins.x_start[pw]:
        best_value[0] = 0
        return -1
    best_value[0] = -FLT_MAX
    for y in range(bins.y_start[ph], bins.y_end[ph]):
        for x in range(bins.x_start[pw], bins.x_end[pw]):
            offset = y * g.row_stride + x * g.col_stride
            value = plane[offset]
            if value > best_value[0]:
                best_value[0] = value
                best = offset
    return best


cdef inline void max_pool_channels_last(const floating* image, floating* out_roi,
                                        const Geometry* g, const PoolBins* bins,
                                        Py_ssize_t channels, int32_t* argmax_roi) noexcept nogil:
    """Max over every bin for `channels` contiguous channels per pixel (bin_max: the
    channels register-blocked, so each bin's maxima stay in registers over its pixels).

    `image` is channels-last with pixel stride `channels`: the features themselves, or a
    packed channel block. Unless argmax_roi is NULL, it receives (n_bins, channels) arg-max
    pixel indices y * W + x (-1: empty bin, or no value above -FLT_MAX), torchvision's
    (int32, as torchvision's).
    """
    cdef Py_ssize_t ph, pw, c, y0, x0
    cdef floating* row
    cdef int32_t* arg_row
    for ph in range(g.pooled_h):
        for pw in range(g.pooled_w):
            row = out_roi + (ph * g.pooled_w + pw) * channels
            arg_row = argmax_roi + (ph * g.pooled_w + pw) * channels if argmax_roi != NULL else NULL
            if bins.y_end[ph] <= bins.y_start[ph] or bins.x_end[pw] <= bins.x_start[pw]:
                for c in range(channels):
                    row[c] = 0
                if arg_row != NULL:
                    for c in range(channels):
                        arg_row[c] = -1
                continue
            y0, x0 = bins.y_start[ph], bins.x_start[pw]
            bin_max(image + (y0 * g.width + x0) * channels, g.width * channels, channels,
                    bins.y_end[ph] - y0, bins.x_end[pw] - x0, y0 * g.width + x0, g.width,
                    channels, row, arg_row)


cdef inline void unpool_max_channels_last(floating* grad_image, const floating* grad_roi,
                                          const floating* image, const Geometry* g,
                                          const PoolBins* bins, Py_ssize_t pixel_stride,
                                          Py_ssize_t c0, Py_ssize_t c1, floating* best,
                                          int32_t* best_at) noexcept nogil:
    """Backward of max_pool_channels_last for channels [c0, c1): each bin's gradient, per
    channel, to its arg-max, found for all those channels in one pass over the bin (bin_max).

    `image` and `grad_image` are channels-last with `pixel_stride` values per pixel (the
    features, or packed blocks), `grad_roi` is (n_bins, pixel_stride); best and best_at are
    scratch rows of c1 - c0 entries.
    """
    cdef Py_ssize_t ph, pw, c, y0, x0
    cdef Py_ssize_t n = c1 - c0
    cdef const floating* grad_row
    for ph in range(g.pooled_h):
        for pw in range(g.pooled_w):
            if bins.y_end[ph] <= bins.y_start[ph] or bins.x_end[pw] <= bins.x_start[pw]:
                continue  # an empty bin sends no gradient
            y0, x0 = bins.y_start[ph], bins.x_start[pw]
            bin_max(image + (y0 * g.width + x0) * pixel_stride + c0, g.width * pixel_stride,
                    pixel_stride, bins.y_end[ph] - y0, bins.x_end[pw] - x0, y0 * g.width + x0,
                    g.width, n, best, best_at)
            grad_row = grad_roi + (ph * g.pooled_w + pw) * pixel_stride + c0
            for c in range(n):
                if best_at[c] >= 0:
                    grad_image[<Py_ssize_t>best_at[c] * pixel_stride + c0 + c] += grad_row[c]


cdef inline void max_pool_plane(const floating* plane, floating* out_plane,
                                int32_t* argmax_plane, const Geometry* g,
                                const PoolBins* bins) noexcept nogil:
    """Max over every bin of one channel plane (channels-first layout), and unless
    argmax_plane is NULL each bin's arg-max pixel index (-1 if none)."""
    cdef Py_ssize_t ph, pw, at
    cdef floating best
    for ph in range(g.pooled_h):
        for pw in range(g.pooled_w):
            at = argmax_in_bin(plane, g, bins, ph, pw, &best)
            out_plane[ph * g.pooled_w + pw] = best
            if argmax_plane != NULL:
                argmax_plane[ph * g.pooled_w + pw] = <int32_t>at  # y * W + x (strides W, 1)


cdef inline void unpool_max_plane(floating* grad_plane, const floating* grad_bins,
                                  const floating* plane, const Geometry* g,
                                  const PoolBins* bins) noexcept nogil:
    """Backward of max pooling on one channel plane: each bin's gradient to its arg-max."""
    cdef Py_ssize_t ph, pw, best_offset
    cdef floating best
    for ph in range(g.pooled_h):
        for pw in range(g.pooled_w):
            best_offset = argmax_in_bin(plane, g, bins, ph, pw, &best)
            if best_offset >= 0:
                grad_plane[best_offset] += grad_bins[(ph * g.pooled_w + pw) * g.out_bin_stride]


cdef bint forward_roi(const KernelCall* call, Scratch* scratch, Py_ssize_t item,
                      const floating* type_tag) noexcept nogil:
    """Per-RoI forward: every channel of the item's RoI k (and its arg-max indices)."""
    cdef Py_ssize_t k = roi_of(call, item)
    cdef const Geometry* g = &call.g
    cdef PoolBins bins = bins_in(scratch.buffers[0], g.pooled_h, g.pooled_w)
    cdef const floating* image = <const floating*>call.values + call.batch_index[k] * g.image_stride
    cdef floating* out_roi = <floating*>call.result + k * g.out_roi_stride
    cdef int32_t* argmax_roi = call.argmax + k * g.out_roi_stride if call.argmax != NULL else NULL
    cdef Py_ssize_t c
    roi_bins(&bins, <const floating*>call.boxes + 4 * k, <floating>call.spatial_scale, g,
             ROI_POOL_BINS)
    if g.channels_last:
        max_pool_channels_last(image, out_roi, g, &bins, g.channels, argmax_roi)
        return True
    for c in range(g.channels):
        max_pool_plane(image + c * g.channel_stride, out_roi + c * g.out_channel_stride,
                       argmax_roi + c * g.out_channel_stride if argmax_roi != NULL else NULL,
                       g, &bins)
    return True


cdef bint forward_block(const KernelCall* call, Scratch* scratch, Py_ssize_t item,
                        const floating* type_tag) noexcept nogil:
    """Packed forward: pool all the image's RoIs from a packed, cache-resident channel block,
    vectorized over it. Same numbers (and arg-max indices) as forward_roi."""
    cdef const Geometry* g = &call.g
    cdef BlockItem it = block_item(item, g.channels, call.block)
    cdef PoolBins bins = bins_in(scratch.buffers[0], g.pooled_h, g.pooled_w)
    cdef floating* packed = <floating*>scratch.buffers[1]
    cdef floating* pooled = <floating*>scratch.buffers[2]
    cdef int32_t* pooled_at = <int32_t*>scratch.buffers[3]
    cdef Py_ssize_t last = call.image_first[it.image + 1]
    cdef Py_ssize_t j, k
    if call.image_first[it.image] == last:
        return True
    pack_block(<const floating*>call.values + it.image * g.image_stride, g, it.first_channel,
               it.n_channels, packed, call.block)
    for j in range(resume_from(scratch, call.image_first[it.image]), last):
        k = call.roi_order[j]
        roi_bins(&bins, <const floating*>call.boxes + 4 * k, <floating>call.spatial_scale, g,
                 ROI_POOL_BINS)
        max_pool_channels_last(packed, pooled, g, &bins, call.block, pooled_at)
        unpack_roi(pooled, <floating*>call.result + k * g.out_roi_stride, g, it.first_channel,
                   it.n_channels, call.block)
        if call.argmax != NULL:
            unpack_roi(pooled_at, call.argmax + k * g.out_roi_stride, g, it.first_channel,
                       it.n_channels, call.block)
        if pause_at(scratch, j + 1, last):
            break
    return True


cdef bint backward_share(const KernelCall* call, Scratch* scratch, Py_ssize_t item,
                         const floating* type_tag) noexcept nogil:
    """Per-RoI backward: each bin's gradient to its arg-max, found again from the features,
    for one channel block of one image. RoIs ascending: deterministic, no atomics."""
    cdef const Geometry* g = &call.g
    cdef BlockItem it = block_item(item, g.channels, call.block)
    cdef PoolBins bins = bins_in(scratch.buffers[0], g.pooled_h, g.pooled_w)
    cdef int32_t* best_at = <int32_t*>scratch.buffers[1]
    cdef floating* best = <floating*>scratch.buffers[1] + call.block
    cdef floating* grad_image = <floating*>call.result + it.image * g.image_stride
    cdef const floating* image = <const floating*>call.features + it.image * g.image_stride
    cdef const floating* grad_roi
    cdef Py_ssize_t last = call.image_first[it.image + 1]
    cdef Py_ssize_t j, k, c
    for j in range(resume_from(scratch, call.image_first[it.image]), last):
        k = call.roi_order[j]
        roi_bins(&bins, <const floating*>call.boxes + 4 * k, <floating>call.spatial_scale, g,
                 ROI_POOL_BINS)
        grad_roi = <const floating*>call.values + k * g.out_roi_stride
        if g.channels_last:  # all channels of the block in one pass per bin
            unpool_max_channels_last(grad_image, grad_roi, image, g, &bins, g.channels,
                                     it.first_channel, it.first_channel + it.n_channels, best,
                                     best_at)
        else:
            for c in range(it.first_channel, it.first_channel + it.n_channels):
                unpool_max_plane(grad_image + c * g.channel_stride,
                                 grad_roi + c * g.out_channel_stride,
                                 image + c * g.channel_stride, g, &bins)
        if pause_at(scratch, j + 1, last):
            break
    return True


cdef bint backward_argmax(const KernelCall* call, Scratch* scratch, Py_ssize_t item,
                          const floating* type_tag) noexcept nogil:
    """Backward from the forward's arg-max indices (torchvision's way), one channel block of
    one image: each output element's gradient to pixel argmax (y * W + x) of its channel.

    Every element sums its RoIs ascending, then bins: torchvision's order, deterministic.
    The indices are the caller's memory, so each is checked where it is used: one outside
    [0, H * W) (-1: an empty bin) sends nothing. Steps: RoIs (channels-last), channel
    planes (channels-first).
    """
    cdef const Geometry* g = &call.g
    cdef BlockItem it = block_item(item, g.channels, call.block)
    cdef Py_ssize_t n_bins = g.pooled_h * g.pooled_w
    cdef Py_ssize_t n_pixels = g.height * g.width
    cdef Py_ssize_t c0 = it.first_channel
    cdef Py_ssize_t c1 = it.first_channel + it.n_channels
    cdef const floating* grad_out = <const floating*>call.values
    cdef floating* grad_image = <floating*>call.result + it.image * g.image_stride
    cdef Py_ssize_t last = call.image_first[it.image + 1]
    cdef Py_ssize_t j, k, c, b, at, element
    if g.channels_last:  # RoIs, bins, then the contiguous channels
        for j in range(resume_from(scratch, call.image_first[it.image]), last):
            k = call.roi_order[j]
            for b in range(n_bins):
                element = k * g.out_roi_stride + b * g.out_bin_stride
                for c in range(c0, c1):
                    at = <Py_ssize_t>call.argmax[element + c]
                    if at >= 0 and at < n_pixels:
                        grad_image[at * g.col_stride + c] += grad_out[element + c]
            if pause_at(scratch, j + 1, last):
                break
        return True
    # Channels-first: one channel plane at a time, so it stays in cache while every RoI of
    # the image scatters into it (each element still sums RoIs, then bins).
    for c in range(resume_from(scratch, c0), c1):
        for j in range(call.image_first[it.image], last):
            k = call.roi_order[j]
            element = k * g.out_roi_stride + c * g.out_channel_stride
            for b in range(n_bins):
                at = <Py_ssize_t>call.argmax[element + b]
                if at >= 0 and at < n_pixels:
                    grad_image[at + c * g.channel_stride] += grad_out[element + b]
        if pause_at(scratch, c + 1, c1):
            break
    return True


cdef bint backward_block(const KernelCall* call, Scratch* scratch, Py_ssize_t item,
                         const floating* type_tag) noexcept nogil:
    """Packed backward: pack the features block, find every bin's arg-max from it, accumulate
    the gradients in a packed block and write it out once. Bit-identical to backward_share."""
    cdef const Geometry* g = &call.g
    cdef BlockItem it = block_item(item, g.channels, call.block)
    cdef Py_ssize_t n_packed = g.height * g.width * call.block
    cdef PoolBins bins = bins_in(scratch.buffers[0], g.pooled_h, g.pooled_w)
    cdef floating* packed = <floating*>scratch.buffers[1]
    cdef floating* packed_grad = packed + n_packed
    cdef floating* roi_grad = <floating*>scratch.buffers[2]
    cdef int32_t* best_at = <int32_t*>scratch.buffers[3]
    cdef floating* best = <floating*>scratch.buffers[3] + call.block
    cdef floating* grad_image = <floating*>call.result + it.image * g.image_stride
    cdef Py_ssize_t last = call.image_first[it.image + 1]
    cdef Py_ssize_t j, k
    if call.image_first[it.image] == last:
        return True  # an image without RoIs keeps its zero gradient
    pack_block(<const floating*>call.features + it.image * g.image_stride, g, it.first_channel,
               it.n_channels, packed, call.block)
    if scratch.resuming:  # the sums so far, saved when the item paused (exact copies)
        pack_block(grad_image, g, it.first_channel, it.n_channels, packed_grad, call.block)
    else:
        memset(packed_grad, 0, n_packed * sizeof(floating))
    for j in range(resume_from(scratch, call.image_first[it.image]), last):
        k = call.roi_order[j]
        roi_bins(&bins, <const floating*>call.boxes + 4 * k, <floating>call.spatial_scale, g,
                 ROI_POOL_BINS)
        pack_roi(<const floating*>call.values + k * g.out_roi_stride, roi_grad, g,
                 it.first_channel, it.n_channels, call.block)
        unpool_max_channels_last(packed_grad, roi_grad, packed, g, &bins, call.block, 0,
                                 call.block, best, best_at)
        if pause_at(scratch, j + 1, last):
            break
    unpack_block(packed_grad, grad_image, g, it.first_channel, it.n_channels, call.block)
    return True


cdef Py_ssize_t run(const floating[:, :, :, ::1] values, const floating[:, ::1] boxes,
              const Py_ssize_t[::1] batch_index, const Py_ssize_t[::1] roi_order,
              const Py_ssize_t[::1] image_first, double spatial_scale,
              const floating* features, int32_t* argmax, floating* result,
              Geometry g, bint backward, bint packed, Py_ssize_t block,
              Py_ssize_t[::1] paused, Py_ssize_t first_item, int n_threads):
    """Fill the KernelCall and run the work items of the chosen kernel, without the GIL."""
    cdef KernelCall call = kernel_call(g, &values[0, 0, 0, 0], result, features, &boxes[0, 0],
                                       batch_index, roi_order, image_first, spatial_scale, block)
    cdef ScratchSpec spec
    cdef size_t bins_bytes = 2 * (g.pooled_h + g.pooled_w) * sizeof(Py_ssize_t)
    cdef size_t packed_bytes = g.height * g.width * block * sizeof(floating)
    cdef size_t pooled_bytes = g.pooled_h * g.pooled_w * block * sizeof(floating)
    cdef size_t best_bytes = 2 * block * sizeof(floating)  # a block of int32 arg-max, then maxima
    cdef Py_ssize_t n_items = n_block_items(&g, block)
    cdef Py_ssize_t* paused_at = paused_list(paused, n_threads)
    cdef Py_ssize_t done
    call.argmax = argmax
    if backward and argmax != NULL:
        spec = scratch_spec(0, 0, 0, 0)
    elif backward and packed:  # features and gradient blocks, one RoI's gradient block, best
        spec = scratch_spec(0, 0, bins_bytes, 2 * packed_bytes, pooled_bytes, best_bytes)
    elif backward:
        spec = scratch_spec(0, 0, bins_bytes, best_bytes)
    elif packed:  # a block of the map, one RoI's pooled block and its arg-max indices
        spec = scratch_spec(0, 0, bins_bytes, packed_bytes, pooled_bytes,
                            pooled_bytes // sizeof(floating) * sizeof(int32_t) if argmax != NULL else 0)
    else:
        spec = scratch_spec(0, 0, bins_bytes, 0)
    with nogil:
        if not backward and not packed:
            done = run_items(forward_roi[floating], &call, first_item, boxes.shape[0],
                             &spec, n_threads)
        elif not backward:
            done = run_items(forward_block[floating], &call, first_item, n_items,
                             &spec, n_threads, paused_at)
        elif argmax != NULL:
            done = run_items(backward_argmax[floating], &call, first_item, n_items,
                             &spec, n_threads, paused_at)
        elif packed:
            done = run_items(backward_block[floating], &call, first_item, n_items,
                             &spec, n_threads, paused_at)
        else:
            done = run_items(backward_share[floating], &call, first_item, n_items,
                             &spec, n_threads, paused_at)
    return done


def forward(const floating[:, :, :, ::1] features, bint channels_last,
            const floating[:, ::1] boxes, const Py_ssize_t[::1] batch_index,
            const Py_ssize_t[::1] roi_order, const Py_ssize_t[::1] image_first,
            double spatial_scale, Py_ssize_t pooled_height, Py_ssize_t pooled_width,
            floating[:, :, :, ::1] out, int32_t[:, :, :, ::1] argmax, bint packed,
            Py_ssize_t block, Py_ssize_t[::1] paused, Py_ssize_t first_item, int n_threads):
    """RoIPool forward into `out`, one time slice of it (see _work_items.run_items): the
    next item to run from first_item on, 0 when done, -1 when out of memory.

    Unless argmax is None, it receives each output element's arg-max pixel index y * W + x
    (-1 if none), in the layout of `out`. Per RoI unless `packed`: then work items are
    (image, block of `block` channels), roi_order/image_first grouping the RoIs by image.
    """
    cdef Geometry g = make_geometry(features.shape, channels_last, pooled_height,
                                    pooled_width, 0, False)
    return run(features, boxes, batch_index, roi_order, image_first, spatial_scale,
               <const floating*>NULL,
               &argmax[0, 0, 0, 0] if argmax is not None else NULL, &out[0, 0, 0, 0], g,
               False, packed, block, paused, first_item, n_threads)


def backward(const floating[:, :, :, ::1] grad_output, bint channels_last,
             const floating[:, ::1] boxes, const Py_ssize_t[::1] batch_index,
             const Py_ssize_t[::1] roi_order, const Py_ssize_t[::1] image_first,
             double spatial_scale, Py_ssize_t pooled_height, Py_ssize_t pooled_width,
             const floating[:, :, :, ::1] features, const int32_t[:, :, :, ::1] argmax,
             floating[:, :, :, ::1] grad_input, bint packed, Py_ssize_t block,
             Py_ssize_t[::1] paused, Py_ssize_t first_item, int n_threads):
    """Gradient of roi_pool w.r.t. the features, accumulated into zeroed `grad_input`, one
    time slice of it (returns as forward does).

    From `argmax` (the forward's indices) when given, else each bin's arg-max is found again
    from `features` (`packed`: through cache-resident channel blocks). Work items are
    (image, block of `block` channels): deterministic, no atomics.
    """
    cdef Geometry g = make_geometry(grad_input.shape, channels_last, pooled_height,
                                    pooled_width, 0, False)
    return run(grad_output, boxes, batch_index, roi_order, image_first, spatial_scale,
               &features[0, 0, 0, 0] if features is not None else NULL,
               <int32_t*>&argmax[0, 0, 0, 0] if argmax is not None else NULL,
               &grad_input[0, 0, 0, 0], g, True, packed, block, paused, first_item, n_threads)


KERNELS = {"forward": forward, "backward": backward}
