# RoIPool (the quantized baseline RoIAlign replaces), with torchvision's exact semantics:
# box corners rounded to feature pixels, an inclusive +1 size, bins [floor(p * bin),
# ceil((p + 1) * bin)) clipped to the map, an empty bin gives 0, the first maximum wins (strict
# `>` from -FLT_MAX, so NaN never wins). Private: _api.py hands over canonical arrays.

from cython.parallel cimport parallel, prange
from libc.float cimport FLT_MAX
from libc.math cimport ceil, floor, fmax, fmin, round
from libc.stdint cimport int32_t
from libc.stdlib cimport free, malloc

from libc.string cimport memset

from roialign_cy._bilinear cimport floating
from roialign_cy._blocks cimport (
    BlockItem,
    block_item,
    pack_block,
    pack_roi,
    share_item,
    unpack_block,
    unpack_roi,
)
from roialign_cy._geometry cimport Geometry, make_geometry


cdef struct PoolBins:
    # The clipped pixel ranges of every bin of one RoI: rows [y_start[ph], y_end[ph]), ...
    Py_ssize_t* y_start
    Py_ssize_t* y_end
    Py_ssize_t* x_start
    Py_ssize_t* x_end


cdef inline PoolBins* bins_new(Py_ssize_t pooled_h, Py_ssize_t pooled_w) noexcept nogil:
    """One thread's bin scratch (a single allocation), or NULL when out of memory."""
    cdef PoolBins* bins = <PoolBins*>malloc(sizeof(PoolBins)
                                            + 2 * (pooled_h + pooled_w) * sizeof(Py_ssize_t))
    if bins == NULL:
        return NULL
    bins.y_start = <Py_ssize_t*>(bins + 1)
    bins.y_end = bins.y_start + pooled_h
    bins.x_start = bins.y_end + pooled_h
    bins.x_end = bins.x_start + pooled_w
    return bins


cdef inline void axis_bins(floating first, floating last, floating spatial_scale,
                           Py_ssize_t n_bins, Py_ssize_t size,
                           Py_ssize_t* bin_start, Py_ssize_t* bin_end) noexcept nogil:
    """torchvision's quantized bins along one axis, clipped to [0, size].

    Computed in double after the type-T products, so huge boxes clip instead of overflowing
    an int (torchvision's int arithmetic is undefined there).
    """
    cdef double start = round(first * spatial_scale)
    cdef double length = fmax(round(last * spatial_scale) - start + 1.0, 1.0)
    cdef floating bin_size = <floating>length / <floating>n_bins
    cdef Py_ssize_t p
    for p in range(n_bins):
        bin_start[p] = <Py_ssize_t>fmin(fmax(floor(<floating>p * bin_size) + start, 0.0), size)
        bin_end[p] = <Py_ssize_t>fmin(fmax(ceil(<floating>(p + 1) * bin_size) + start, 0.0), size)


cdef inline void roi_bins(PoolBins* bins, const floating* box, floating spatial_scale,
                          const Geometry* g) noexcept nogil:
    """The bins of box = (x1, y1, x2, y2)."""
    axis_bins(box[1], box[3], spatial_scale, g.pooled_h, g.height, bins.y_start, bins.y_end)
    axis_bins(box[0], box[2], spatial_scale, g.pooled_w, g.width, bins.x_start, bins.x_end)


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
    """Max over every bin for `channels` contiguous channels per pixel (they vectorize).

    `image` is channels-last with pixel stride `channels`: the features themselves, or a
    packed channel block. Unless argmax_roi is NULL, it receives (n_bins, channels) arg-max
    pixel indices y * W + x (-1: empty bin, or no value above -FLT_MAX), torchvision's
    (int32, as torchvision's).
    """
    cdef Py_ssize_t ph, pw, y, x, c
    cdef int32_t at  # the wrapper only asks for indices when H * W < 2**31
    cdef floating* row
    cdef int32_t* arg_row
    cdef const floating* pixel
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
            for c in range(channels):
                row[c] = -FLT_MAX
            if arg_row == NULL:
                for y in range(bins.y_start[ph], bins.y_end[ph]):
                    for x in range(bins.x_start[pw], bins.x_end[pw]):
                        pixel = image + (y * g.width + x) * channels
                        for c in range(channels):  # a select, not a branch: it vectorizes
                            row[c] = pixel[c] if pixel[c] > row[c] else row[c]
                continue
            for c in range(channels):
                arg_row[c] = -1
            for y in range(bins.y_start[ph], bins.y_end[ph]):
                for x in range(bins.x_start[pw], bins.x_end[pw]):
                    at = <int32_t>(y * g.width + x)
                    pixel = image + <Py_ssize_t>at * channels
                    for c in range(channels):
                        arg_row[c] = at if pixel[c] > row[c] else arg_row[c]
                        row[c] = pixel[c] if pixel[c] > row[c] else row[c]


cdef inline void unpool_max_channels_last(floating* grad_image, const floating* grad_roi,
                                          const floating* image, const Geometry* g,
                                          const PoolBins* bins, Py_ssize_t pixel_stride,
                                          Py_ssize_t c0, Py_ssize_t c1, floating* best,
                                          Py_ssize_t* best_at) noexcept nogil:
    """Backward of max_pool_channels_last for channels [c0, c1): each bin's gradient, per
    channel, to its arg-max, found for all those channels in one pass over the bin.

    `image` and `grad_image` are channels-last with `pixel_stride` values per pixel (the
    features, or packed blocks), `grad_roi` is (n_bins, pixel_stride); best and best_at are
    scratch rows of c1 - c0 entries.
    """
    cdef Py_ssize_t ph, pw, y, x, c, at
    cdef Py_ssize_t n = c1 - c0
    cdef const floating* pixel
    cdef const floating* grad_row
    for ph in range(g.pooled_h):
        for pw in range(g.pooled_w):
            if bins.y_end[ph] <= bins.y_start[ph] or bins.x_end[pw] <= bins.x_start[pw]:
                continue  # an empty bin sends no gradient
            for c in range(n):
                best[c] = -FLT_MAX
                best_at[c] = -1
            for y in range(bins.y_start[ph], bins.y_end[ph]):
                for x in range(bins.x_start[pw], bins.x_end[pw]):
                    at = (y * g.width + x) * pixel_stride + c0
                    pixel = image + at
                    for c in range(n):  # selects, not branches: they vectorize
                        best_at[c] = at if pixel[c] > best[c] else best_at[c]
                        best[c] = pixel[c] if pixel[c] > best[c] else best[c]
            grad_row = grad_roi + (ph * g.pooled_w + pw) * pixel_stride + c0
            for c in range(n):
                if best_at[c] >= 0:
                    grad_image[best_at[c] + c] += grad_row[c]


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


def roi_pool_forward(const floating[:, :, :, ::1] features, bint channels_last,
                     const Py_ssize_t[::1] batch_index, const floating[:, ::1] boxes,
                     double spatial_scale, Py_ssize_t pooled_height, Py_ssize_t pooled_width,
                     floating[:, :, :, ::1] out, int n_threads,
                     int32_t[:, :, :, ::1] argmax=None):
    """RoIPool forward into `out`, RoIs spread over threads. False when out of memory.

    Unless argmax is None, it receives each output element's arg-max pixel index y * W + x
    (-1 if none), in the layout of `out`: what roi_pool_backward_argmax takes.
    """
    cdef Geometry g = make_geometry(features.shape, channels_last, pooled_height,
                                    pooled_width, 0, False)
    cdef Py_ssize_t k, c
    cdef PoolBins* bins = NULL
    cdef int failed = 0
    cdef int* failed_flag = &failed
    cdef floating scale = <floating>spatial_scale
    cdef const floating* image
    cdef floating* out_roi
    cdef int32_t* argmax_base = &argmax[0, 0, 0, 0] if argmax is not None else NULL
    cdef int32_t* argmax_roi

    with nogil, parallel(num_threads=n_threads, use_threads_if=n_threads > 1):
        bins = bins_new(pooled_height, pooled_width)
        if bins == NULL:
            failed_flag[0] = 1
        for k in prange(boxes.shape[0], schedule='dynamic'):
            if failed_flag[0]:
                continue
            roi_bins(bins, &boxes[k, 0], scale, &g)
            image = &features[0, 0, 0, 0] + batch_index[k] * g.image_stride
            out_roi = &out[0, 0, 0, 0] + k * g.out_roi_stride
            argmax_roi = argmax_base + k * g.out_roi_stride if argmax_base != NULL else NULL
            if channels_last:
                max_pool_channels_last(image, out_roi, &g, bins, g.channels, argmax_roi)
                continue
            for c in range(g.channels):
                max_pool_plane(image + c * g.channel_stride, out_roi + c * g.out_channel_stride,
                               argmax_roi + c * g.out_channel_stride if argmax_roi != NULL
                               else NULL, &g, bins)
        free(bins)
    return not failed


def roi_pool_backward(const floating[:, :, :, ::1] grad_output, bint channels_last,
                      const floating[:, ::1] boxes, const Py_ssize_t[::1] roi_order,
                      const Py_ssize_t[::1] image_first, double spatial_scale,
                      Py_ssize_t pooled_height, Py_ssize_t pooled_width,
                      const floating[:, :, :, ::1] features, floating[:, :, :, ::1] grad_input,
                      Py_ssize_t channel_blocks, int n_threads):
    """Gradient of roi_pool w.r.t. the features, accumulated into zeroed `grad_input`.

    Each bin's gradient goes to its arg-max element, found again from `features`. Work items
    are (image, channel block) with RoIs in ascending order: deterministic, no atomics.
    """
    cdef Geometry g = make_geometry(grad_input.shape, channels_last, pooled_height,
                                    pooled_width, 0, False)
    cdef Py_ssize_t n_images = grad_input.shape[0]
    cdef Py_ssize_t item, b, j, k, c, c0, c1
    cdef BlockItem it
    cdef PoolBins* bins = NULL
    cdef floating* best = NULL
    cdef Py_ssize_t* best_at = NULL
    cdef int failed = 0
    cdef int* failed_flag = &failed
    cdef floating scale = <floating>spatial_scale
    cdef const floating* image = &features[0, 0, 0, 0]
    cdef floating* grad_base = &grad_input[0, 0, 0, 0]
    cdef const floating* grad_roi

    with nogil, parallel(num_threads=n_threads, use_threads_if=n_threads > 1):
        bins = bins_new(pooled_height, pooled_width)
        best = <floating*>malloc(g.channels * sizeof(floating))
        best_at = <Py_ssize_t*>malloc(g.channels * sizeof(Py_ssize_t))
        if bins == NULL or best == NULL or best_at == NULL:
            failed_flag[0] = 1
        for item in prange(n_images * channel_blocks, schedule='dynamic'):
            if failed_flag[0]:
                continue
            it = share_item(item, g.channels, channel_blocks)
            b, c0, c1 = it.image, it.first_channel, it.first_channel + it.n_channels
            for j in range(image_first[b], image_first[b + 1]):
                k = roi_order[j]
                roi_bins(bins, &boxes[k, 0], scale, &g)
                grad_roi = &grad_output[0, 0, 0, 0] + k * g.out_roi_stride
                if channels_last:  # all channels of the block in one pass per bin
                    unpool_max_channels_last(grad_base + b * g.image_stride, grad_roi,
                                             image + b * g.image_stride, &g, bins, g.channels,
                                             c0, c1, best, best_at)
                    continue
                for c in range(c0, c1):
                    unpool_max_plane(grad_base + b * g.image_stride + c * g.channel_stride,
                                     grad_roi + c * g.out_channel_stride,
                                     image + b * g.image_stride + c * g.channel_stride, &g, bins)
        free(bins)
        free(best)
        free(best_at)
    return not failed


def roi_pool_backward_argmax(const floating[:, :, :, ::1] grad_output, bint channels_last,
                             const int32_t[:, :, :, ::1] argmax,
                             const Py_ssize_t[::1] roi_order, const Py_ssize_t[::1] image_first,
                             Py_ssize_t pooled_height, Py_ssize_t pooled_width,
                             floating[:, :, :, ::1] grad_input, Py_ssize_t channel_blocks,
                             int n_threads):
    """Gradient of roi_pool from the arg-max indices its forward recorded (torchvision's way).

    Each output element's gradient goes to pixel argmax (y * W + x) of its channel, none
    when -1; the wrapper has checked every index is in [-1, H * W). Work items are (image,
    channel block); every element sums its RoIs ascending, then bins: torchvision's order,
    deterministic, no atomics.
    """
    cdef Geometry g = make_geometry(grad_input.shape, channels_last, pooled_height,
                                    pooled_width, 0, False)
    cdef Py_ssize_t n_images = grad_input.shape[0]
    cdef Py_ssize_t n_bins = pooled_height * pooled_width
    cdef BlockItem it
    cdef Py_ssize_t item, b, block, j, k, c, c0, c1, bin, at, element
    cdef const floating* grad_out = &grad_output[0, 0, 0, 0]
    cdef const int32_t* argmax_base = &argmax[0, 0, 0, 0]
    cdef floating* grad_base = &grad_input[0, 0, 0, 0]
    cdef floating* grad_image

    with nogil, parallel(num_threads=n_threads, use_threads_if=n_threads > 1):
        for item in prange(n_images * channel_blocks, schedule='dynamic'):
            it = share_item(item, g.channels, channel_blocks)
            b, c0, c1 = it.image, it.first_channel, it.first_channel + it.n_channels
            grad_image = grad_base + b * g.image_stride
            if channels_last:  # RoIs, bins, then the contiguous channels
                for j in range(image_first[b], image_first[b + 1]):
                    k = roi_order[j]
                    for bin in range(n_bins):
                        element = k * g.out_roi_stride + bin * g.out_bin_stride
                        for c in range(c0, c1):
                            at = <Py_ssize_t>argmax_base[element + c]
                            if at >= 0:
                                grad_image[at * g.col_stride + c] += grad_out[element + c]
                continue
            # Channels-first: one channel plane at a time, so it stays in cache while every
            # RoI of the image scatters into it (each element still sums RoIs, then bins).
            for c in range(c0, c1):
                for j in range(image_first[b], image_first[b + 1]):
                    k = roi_order[j]
                    element = k * g.out_roi_stride + c * g.out_channel_stride
                    for bin in range(n_bins):
                        at = <Py_ssize_t>argmax_base[element + bin]
                        if at >= 0:
                            grad_image[at + c * g.channel_stride] += grad_out[element + bin]
    return True


def roi_pool_forward_blocked(const floating[:, :, :, ::1] features, bint channels_last,
                             const floating[:, ::1] boxes, const Py_ssize_t[::1] roi_order,
                             const Py_ssize_t[::1] image_first, double spatial_scale,
                             Py_ssize_t pooled_height, Py_ssize_t pooled_width,
                             floating[:, :, :, ::1] out, Py_ssize_t block, int n_threads,
                             int32_t[:, :, :, ::1] argmax=None):
    """RoIPool forward for many RoIs per image: work items are (image, channel block).

    Like roi_align_forward_blocked: pools all the image's RoIs from a packed, cache-resident
    block of `block` channels, vectorized over them. Same numbers (and arg-max indices,
    unless argmax is None) as roi_pool_forward.
    """
    cdef Geometry g = make_geometry(features.shape, channels_last, pooled_height,
                                    pooled_width, 0, False)
    cdef Py_ssize_t n_images = features.shape[0]
    cdef Py_ssize_t n_blocks = (g.channels + block - 1) // block
    cdef Py_ssize_t item, b, c0, n_channels, j, k
    cdef BlockItem it
    cdef PoolBins* bins = NULL
    cdef floating* packed = NULL
    cdef floating* pooled = NULL
    cdef int32_t* pooled_at = NULL
    cdef int failed = 0
    cdef int* failed_flag = &failed
    cdef floating scale = <floating>spatial_scale
    cdef const floating* image = &features[0, 0, 0, 0]
    cdef floating* out_base = &out[0, 0, 0, 0]
    cdef int32_t* argmax_base = &argmax[0, 0, 0, 0] if argmax is not None else NULL

    with nogil, parallel(num_threads=n_threads, use_threads_if=n_threads > 1):
        bins = bins_new(pooled_height, pooled_width)
        packed = <floating*>malloc(g.height * g.width * block * sizeof(floating))
        pooled = <floating*>malloc(pooled_height * pooled_width * block * sizeof(floating))
        if argmax_base != NULL:
            pooled_at = <int32_t*>malloc(pooled_height * pooled_width * block * sizeof(int32_t))
        if bins == NULL or packed == NULL or pooled == NULL or (argmax_base != NULL
                                                                and pooled_at == NULL):
            failed_flag[0] = 1
        for item in prange(n_images * n_blocks, schedule='dynamic'):
            it = block_item(item, g.channels, block)
            b, c0, n_channels = it.image, it.first_channel, it.n_channels
            if failed_flag[0] or image_first[b] == image_first[b + 1]:
                continue
            pack_block(image + b * g.image_stride, &g, c0, n_channels, packed, block)
            for j in range(image_first[b], image_first[b + 1]):
                k = roi_order[j]
                roi_bins(bins, &boxes[k, 0], scale, &g)
                max_pool_channels_last(packed, pooled, &g, bins, block, pooled_at)
                unpack_roi(pooled, out_base + k * g.out_roi_stride, &g, c0, n_channels, block)
                if argmax_base != NULL:
                    unpack_roi(pooled_at, argmax_base + k * g.out_roi_stride, &g, c0,
                               n_channels, block)
        free(bins)
        free(packed)
        free(pooled)
        free(pooled_at)
    return not failed


def roi_pool_backward_blocked(const floating[:, :, :, ::1] grad_output, bint channels_last,
                              const floating[:, ::1] boxes, const Py_ssize_t[::1] roi_order,
                              const Py_ssize_t[::1] image_first, double spatial_scale,
                              Py_ssize_t pooled_height, Py_ssize_t pooled_width,
                              const floating[:, :, :, ::1] features,
                              floating[:, :, :, ::1] grad_input, Py_ssize_t block,
                              int n_threads):
    """RoIPool backward for many RoIs per image: work items are (image, channel block).

    Each item packs its features block, finds every bin's arg-max from it, accumulates the
    gradients in a packed block and writes it out once. Items own disjoint elements, RoIs go
    in ascending order: deterministic and bit-identical to roi_pool_backward.
    """
    cdef Geometry g = make_geometry(grad_input.shape, channels_last, pooled_height,
                                    pooled_width, 0, False)
    cdef Py_ssize_t n_images = grad_input.shape[0]
    cdef Py_ssize_t n_blocks = (g.channels + block - 1) // block
    cdef Py_ssize_t n_pixels = g.height * g.width
    cdef Py_ssize_t item, b, c0, n_channels, j, k
    cdef BlockItem it
    cdef PoolBins* bins = NULL
    cdef floating* packed = NULL
    cdef floating* packed_grad = NULL
    cdef floating* roi_grad = NULL
    cdef floating* best = NULL
    cdef Py_ssize_t* best_at = NULL
    cdef int failed = 0
    cdef int* failed_flag = &failed
    cdef floating scale = <floating>spatial_scale
    cdef const floating* image = &features[0, 0, 0, 0]
    cdef const floating* grad_out = &grad_output[0, 0, 0, 0]
    cdef floating* grad_base = &grad_input[0, 0, 0, 0]

    with nogil, parallel(num_threads=n_threads, use_threads_if=n_threads > 1):
        bins = bins_new(pooled_height, pooled_width)
        packed = <floating*>malloc(n_pixels * block * sizeof(floating))
        packed_grad = <floating*>malloc(n_pixels * block * sizeof(floating))
        roi_grad = <floating*>malloc(pooled_height * pooled_width * block * sizeof(floating))
        best = <floating*>malloc(block * sizeof(floating))
        best_at = <Py_ssize_t*>malloc(block * sizeof(Py_ssize_t))
        if (bins == NULL or packed == NULL or packed_grad == NULL or roi_grad == NULL
                or best == NULL or best_at == NULL):
            failed_flag[0] = 1
        for item in prange(n_images * n_blocks, schedule='dynamic'):
            it = block_item(item, g.channels, block)
            b, c0, n_channels = it.image, it.first_channel, it.n_channels
            if failed_flag[0] or image_first[b] == image_first[b + 1]:
                continue  # an image without RoIs keeps its zero gradient
            pack_block(image + b * g.image_stride, &g, c0, n_channels, packed, block)
            memset(packed_grad, 0, n_pixels * block * sizeof(floating))
            for j in range(image_first[b], image_first[b + 1]):
                k = roi_order[j]
                roi_bins(bins, &boxes[k, 0], scale, &g)
                pack_roi(grad_out + k * g.out_roi_stride, roi_grad, &g, c0, n_channels, block)
                unpool_max_channels_last(packed_grad, roi_grad, packed, &g, bins, block, 0,
                                         block, best, best_at)
            unpack_block(packed_grad, grad_base + b * g.image_stride, &g, c0, n_channels, block)
        free(bins)
        free(packed)
        free(packed_grad)
        free(roi_grad)
        free(best)
        free(best_at)
    return not failed
