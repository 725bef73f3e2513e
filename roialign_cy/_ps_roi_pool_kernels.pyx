# The position-sensitive RoIPool kernels (ps_roi_pool, ps_roi_pool_backward; R-FCN), with
# torchvision's exact forward: box corners rounded to feature pixels, size
# max(end - start, 1) (no +1, unlike roi_pool), bins [floor(p * bin), ceil((p + 1) * bin))
# offset by the start and clipped to [0, size - 1] (so the map's last row and column never
# take part), each bin AVERAGED over its elements, an empty bin gives 0. Output bin
# (c, ph, pw) reads only input channel c_in = (c * PH + ph) * PW + pw. The backward is the
# exact adjoint of that forward (torchvision's own backward clips to [0, size] instead).
# Private: _ps_roi_pool.py hands over private, canonical arrays. Each entry point fills a
# KernelCall and runs its work items through _work_items.run_items.

from roialign_cy._channel_blocks cimport BlockItem, block_item
from roialign_cy._kernel_call cimport (
    Geometry,
    KernelCall,
    kernel_call,
    make_geometry,
    n_block_items,
    roi_of,
)
from roialign_cy._pool_bins cimport PS_ROI_POOL_BINS, PoolBins, bins_in, roi_bins
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


cdef inline void bin_means(floating* out_bin, Py_ssize_t out_step, const floating* plane,
                           Py_ssize_t plane_step, Py_ssize_t n, const Geometry* g,
                           Py_ssize_t y0, Py_ssize_t y1, Py_ssize_t x0, Py_ssize_t x1,
                           floating* acc) noexcept nogil:
    """out_bin[c * out_step] = the mean of plane c (plane + c * plane_step) over rows
    [y0, y1) and columns [x0, x1) (not empty), for the n output channels of one bin: each
    summed in torchvision's order (rows outer) and divided by the element count in type T.
    Channels innermost, so each element's offset is computed once for all of them (acc:
    scratch for n values)."""
    cdef Py_ssize_t y, x, c, at
    cdef floating area = <floating>((y1 - y0) * (x1 - x0))
    for c in range(n):
        acc[c] = 0
    for y in range(y0, y1):
        for x in range(x0, x1):
            at = y * g.row_stride + x * g.col_stride
            for c in range(n):
                acc[c] = acc[c] + plane[c * plane_step + at]
    for c in range(n):
        out_bin[c * out_step] = acc[c] / area


cdef inline void bin_spread(floating* grad_plane, Py_ssize_t plane_step, Py_ssize_t n,
                            const floating* grad, Py_ssize_t grad_step, const Geometry* g,
                            Py_ssize_t y0, Py_ssize_t y1, Py_ssize_t x0, Py_ssize_t x1,
                            floating* share) noexcept nogil:
    """Backward of bin_means: torchvision's grad / count added to every element of the bin,
    in each of the n planes (share: scratch for n values)."""
    cdef Py_ssize_t y, x, c, at
    cdef floating area = <floating>((y1 - y0) * (x1 - x0))
    for c in range(n):
        share[c] = grad[c * grad_step] / area
    for y in range(y0, y1):
        for x in range(x0, x1):
            at = y * g.row_stride + x * g.col_stride
            for c in range(n):
                grad_plane[c * plane_step + at] += share[c]


cdef bint forward_roi(const KernelCall* call, Scratch* scratch, Py_ssize_t item,
                      const floating* type_tag) noexcept nogil:
    """Forward: every bin of every output channel of the item's RoI k (bins outer, the
    bin's output channels innermost)."""
    cdef Py_ssize_t k = roi_of(call, item)
    cdef const Geometry* g = &call.g
    cdef PoolBins bins = bins_in(scratch.buffers[0], g.pooled_h, g.pooled_w)
    cdef floating* acc = <floating*>scratch.buffers[1]
    cdef const floating* image = <const floating*>call.values + call.batch_index[k] * g.image_stride
    cdef floating* out_roi = <floating*>call.result + k * g.out_roi_stride
    cdef Py_ssize_t n_bins = g.pooled_h * g.pooled_w
    cdef Py_ssize_t n_out = g.channels // n_bins
    cdef Py_ssize_t ph, pw, b, c
    roi_bins(&bins, <const floating*>call.boxes + 4 * k, <floating>call.spatial_scale, g,
             PS_ROI_POOL_BINS)
    for ph in range(g.pooled_h):
        for pw in range(g.pooled_w):
            b = ph * g.pooled_w + pw
            if bins.y_end[ph] <= bins.y_start[ph] or bins.x_end[pw] <= bins.x_start[pw]:
                for c in range(n_out):  # an empty bin
                    out_roi[c * g.out_channel_stride + b * g.out_bin_stride] = 0
                continue
            bin_means(out_roi + b * g.out_bin_stride, g.out_channel_stride,
                      image + b * g.channel_stride, n_bins * g.channel_stride, n_out, g,
                      bins.y_start[ph], bins.y_end[ph], bins.x_start[pw], bins.x_end[pw], acc)
    return True


cdef bint backward_share(const KernelCall* call, Scratch* scratch, Py_ssize_t item,
                         const floating* type_tag) noexcept nogil:
    """Backward: the gradient of one block of input channels of one image, from all its RoIs
    (input channel c_in takes one bin of each RoI). RoIs ascending, then bins: the same
    order for any thread count, no atomics."""
    cdef const Geometry* g = &call.g
    cdef BlockItem it = block_item(item, g.channels, call.block)
    cdef PoolBins bins = bins_in(scratch.buffers[0], g.pooled_h, g.pooled_w)
    cdef floating* share = <floating*>scratch.buffers[1]
    cdef floating* grad_image = <floating*>call.result + it.image * g.image_stride
    cdef Py_ssize_t n_bins = g.pooled_h * g.pooled_w
    cdef Py_ssize_t c0 = it.first_channel
    cdef Py_ssize_t c1 = it.first_channel + it.n_channels
    cdef Py_ssize_t last = call.image_first[it.image + 1]
    cdef Py_ssize_t j, k, b, ph, pw, first_out, n
    cdef const floating* grad_roi
    for j in range(resume_from(scratch, call.image_first[it.image]), last):
        k = call.roi_order[j]
        roi_bins(&bins, <const floating*>call.boxes + 4 * k, <floating>call.spatial_scale, g,
                 PS_ROI_POOL_BINS)
        grad_roi = <const floating*>call.values + k * g.out_roi_stride
        for ph in range(g.pooled_h):
            for pw in range(g.pooled_w):
                if bins.y_end[ph] <= bins.y_start[ph] or bins.x_end[pw] <= bins.x_start[pw]:
                    continue  # an empty bin sends no gradient
                b = ph * g.pooled_w + pw
                # the output channels c whose plane c * PH * PW + b lies in [c0, c1)
                first_out = (c0 - b + n_bins - 1) // n_bins if c0 > b else 0
                n = ((c1 - b + n_bins - 1) // n_bins if c1 > b else 0) - first_out
                if n <= 0:
                    continue
                bin_spread(grad_image + (first_out * n_bins + b) * g.channel_stride,
                           n_bins * g.channel_stride, n,
                           grad_roi + first_out * g.out_channel_stride + b * g.out_bin_stride,
                           g.out_channel_stride, g, bins.y_start[ph], bins.y_end[ph],
                           bins.x_start[pw], bins.x_end[pw], share)
        if pause_at(scratch, j + 1, last):
            break
    return True


cdef Geometry ps_geometry(const Py_ssize_t* shape, bint channels_last, Py_ssize_t pooled_h,
                          Py_ssize_t pooled_w) noexcept nogil:
    """The Geometry of a map of C = C_out * PH * PW channels and its (K, C_out, PH, PW) or
    (K, PH, PW, C_out) output: a channels-last bin holds C_out values."""
    cdef Geometry g = make_geometry(shape, channels_last, pooled_h, pooled_w, 0, False)
    g.out_roi_stride = g.channels  # C_out * PH * PW
    if channels_last:
        g.out_bin_stride = g.channels // (pooled_h * pooled_w)
    return g


cdef Py_ssize_t run(const floating[:, :, :, ::1] values, const floating[:, ::1] boxes,
                    const Py_ssize_t[::1] batch_index, const Py_ssize_t[::1] roi_order,
                    const Py_ssize_t[::1] image_first, double spatial_scale, floating* result,
                    Geometry g, bint backward, Py_ssize_t block, Py_ssize_t[::1] paused,
                    Py_ssize_t first_item, int n_threads):
    """Fill the KernelCall and run the work items of the chosen kernel, without the GIL."""
    cdef KernelCall call = kernel_call(g, &values[0, 0, 0, 0], result, NULL, &boxes[0, 0],
                                       batch_index, roi_order, image_first, spatial_scale, block)
    # the bins' ranges, and one bin's output channels (sums, or shares of the gradient)
    cdef ScratchSpec spec = scratch_spec(0, 0, 2 * (g.pooled_h + g.pooled_w) * sizeof(Py_ssize_t),
                                         g.channels // (g.pooled_h * g.pooled_w)
                                         * sizeof(floating))
    cdef Py_ssize_t n_items = n_block_items(&g, block)
    cdef Py_ssize_t* paused_at = paused_list(paused, n_threads)
    cdef Py_ssize_t done
    with nogil:
        if not backward:
            done = run_items(forward_roi[floating], &call, first_item, boxes.shape[0],
                             &spec, n_threads)
        else:
            done = run_items(backward_share[floating], &call, first_item, n_items,
                             &spec, n_threads, paused_at)
    return done


def forward(const floating[:, :, :, ::1] features, bint channels_last,
            const floating[:, ::1] boxes, const Py_ssize_t[::1] batch_index,
            const Py_ssize_t[::1] roi_order, const Py_ssize_t[::1] image_first,
            double spatial_scale, Py_ssize_t pooled_height, Py_ssize_t pooled_width,
            floating[:, :, :, ::1] out, bint packed, Py_ssize_t block, Py_ssize_t[::1] paused,
            Py_ssize_t first_item, int n_threads):
    """Position-sensitive RoIPool forward into `out`, one time slice of it (see
    _work_items.run_items): the next item to run from first_item on, 0 when done, -1 when
    out of memory.

    features (N, C, H, W), or (N, H, W, C) when channels_last, C a multiple of PH * PW;
    out (K, C / (PH * PW), PH, PW) or (K, PH, PW, C / (PH * PW)). One work item per RoI
    (`packed` and `block` are unused).
    """
    cdef Geometry g = ps_geometry(features.shape, channels_last, pooled_height, pooled_width)
    return run(features, boxes, batch_index, roi_order, image_first, spatial_scale,
               &out[0, 0, 0, 0], g, False, block, paused, first_item, n_threads)


def backward(const floating[:, :, :, ::1] grad_output, bint channels_last,
             const floating[:, ::1] boxes, const Py_ssize_t[::1] batch_index,
             const Py_ssize_t[::1] roi_order, const Py_ssize_t[::1] image_first,
             double spatial_scale, Py_ssize_t pooled_height, Py_ssize_t pooled_width,
             floating[:, :, :, ::1] grad_input, bint packed, Py_ssize_t block,
             Py_ssize_t[::1] paused, Py_ssize_t first_item, int n_threads):
    """Gradient of ps_roi_pool w.r.t. the features (the adjoint of forward), accumulated into
    zeroed `grad_input`, one time slice of it (returns as forward does).

    Work items are (image, block of `block` input channels): deterministic, no atomics.
    """
    cdef Geometry g = ps_geometry(grad_input.shape, channels_last, pooled_height, pooled_width)
    return run(grad_output, boxes, batch_index, roi_order, image_first, spatial_scale,
               &grad_input[0, 0, 0, 0], g, True, block, paused, first_item, n_threads)


KERNELS = {"forward": forward, "backward": backward}
