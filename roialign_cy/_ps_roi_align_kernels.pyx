# The position-sensitive RoIAlign kernels (ps_roi_align, ps_roi_align_backward; R-FCN,
# Light-Head R-CNN). Output bin (c, ph, pw) of a RoI reads only input channel
# c_in = (c * PH + ph) * PW + pw, with roi_align's aligned geometry (offset 0.5, no 1x1
# clamp) and average. Private: _ps_roi_align.py validates every argument (input channels a
# multiple of PH * PW) and hands over private, canonical arrays. Each entry point fills a
# KernelCall and runs its work items through _work_items.run_items.
#
# Each RoI's sample table is built once and serves every output channel: a bin's samples
# sit at the same pixels in every channel plane, only the plane changes with c.

from roialign_cy._channel_blocks cimport BlockItem, block_item
from roialign_cy._kernel_call cimport (
    Geometry,
    KernelCall,
    kernel_call,
    make_geometry,
    n_block_items,
)
from roialign_cy._sample_table cimport (
    RoIGrid,
    SampleTable,
    build_axis_tables,
    build_sample_table,
    fits_sample_table,
    floating,
    four_taps,
    sample_taps,
)
from roialign_cy._work_items cimport Scratch, ScratchSpec, run_items, scratch_spec


cdef inline bint roi_samples(SampleTable* table, const floating* box, floating spatial_scale,
                             const Geometry* g, RoIGrid* grid) noexcept nogil:
    """One RoI's samples (aligned geometry): the axis tables, and the per-sample table of
    taps when it fits (then table.corner_offsets is set: see bin_sum). False when out of
    memory."""
    if not build_axis_tables(table, box, spatial_scale, True, g.pooled_h, g.pooled_w,
                             g.sampling_ratio, g.height, g.width, g.row_stride, g.col_stride,
                             False, grid):
        return False
    if not fits_sample_table(table, g.pooled_h, g.pooled_w):
        return True
    return build_sample_table(table, g.pooled_h, g.pooled_w, False, box)


cdef inline floating bin_sum(const floating* plane, const SampleTable* table, bint per_sample,
                             Py_ssize_t ph, Py_ssize_t pw, Py_ssize_t pooled_w) noexcept nogil:
    """The sum of bin (ph, pw)'s inside samples on one channel plane, in torchvision's order
    (iy outer, ix inner): from the per-sample table, or (a grid too big for one) from the
    axis tables, the taps formed on the way (the same numbers)."""
    cdef Py_ssize_t s, iy, ix, b = ph * pooled_w + pw
    cdef const Py_ssize_t* offsets = table.corner_offsets
    cdef const floating* weights = <const floating*>table.corner_weights
    cdef Py_ssize_t tap_offsets[4]
    cdef floating tap_weights[4]
    cdef floating acc = 0
    if per_sample:
        for s in range(table.bin_first[b], table.bin_first[b + 1]):
            acc = acc + four_taps(plane, &offsets[4 * s], &weights[4 * s])
        return acc
    for iy in range(table.y_first[ph], table.y_first[ph + 1]):
        for ix in range(table.x_first[pw], table.x_first[pw + 1]):
            sample_taps(&table.y_samples[iy], &table.x_samples[ix], False, tap_offsets,
                        tap_weights)
            acc = acc + four_taps(plane, tap_offsets, tap_weights)
    return acc


cdef inline void scatter_taps(floating* grad_plane, const Py_ssize_t* offsets,
                              const floating* weights, floating grad,
                              floating count) noexcept nogil:
    """Add one sample's share of `grad` to its 4 taps: torchvision's grad * w_i / count, one
    tap after the other (two taps may be the same element at a border)."""
    grad_plane[offsets[0]] += grad * weights[0] / count
    grad_plane[offsets[1]] += grad * weights[1] / count
    grad_plane[offsets[2]] += grad * weights[2] / count
    grad_plane[offsets[3]] += grad * weights[3] / count


cdef inline void bin_scatter(floating* grad_plane, const SampleTable* table, bint per_sample,
                             Py_ssize_t ph, Py_ssize_t pw, Py_ssize_t pooled_w, floating grad,
                             floating count) noexcept nogil:
    """Backward of bin_sum / count: bin (ph, pw)'s gradient spread over its samples' taps."""
    cdef Py_ssize_t s, iy, ix, b = ph * pooled_w + pw
    cdef const Py_ssize_t* offsets = table.corner_offsets
    cdef const floating* weights = <const floating*>table.corner_weights
    cdef Py_ssize_t tap_offsets[4]
    cdef floating tap_weights[4]
    if per_sample:
        for s in range(table.bin_first[b], table.bin_first[b + 1]):
            scatter_taps(grad_plane, &offsets[4 * s], &weights[4 * s], grad, count)
        return
    for iy in range(table.y_first[ph], table.y_first[ph + 1]):
        for ix in range(table.x_first[pw], table.x_first[pw + 1]):
            sample_taps(&table.y_samples[iy], &table.x_samples[ix], False, tap_offsets,
                        tap_weights)
            scatter_taps(grad_plane, tap_offsets, tap_weights, grad, count)


cdef bint forward_roi(const KernelCall* call, Scratch* scratch, Py_ssize_t k,
                      const floating* type_tag) noexcept nogil:
    """Forward, work item k: every bin of every output channel of RoI k, bins outer so that
    a bin's sample taps stay in registers while the output channels walk their planes."""
    cdef const Geometry* g = &call.g
    cdef const floating* image = <const floating*>call.values + call.batch_index[k] * g.image_stride
    cdef floating* out_roi = <floating*>call.result + k * g.out_roi_stride
    cdef Py_ssize_t n_bins = g.pooled_h * g.pooled_w
    cdef Py_ssize_t plane_step = n_bins * g.channel_stride  # from c_in to c_in + PH * PW
    cdef Py_ssize_t ph, pw, b, c
    cdef RoIGrid grid
    cdef bint per_sample
    cdef floating count
    cdef const floating* plane
    if not roi_samples(&scratch.table, <const floating*>call.boxes + 4 * k,
                       <floating>call.spatial_scale, g, &grid):
        return False
    per_sample = fits_sample_table(&scratch.table, g.pooled_h, g.pooled_w)
    count = <floating>grid.count
    for ph in range(g.pooled_h):
        for pw in range(g.pooled_w):
            b = ph * g.pooled_w + pw
            plane = image + b * g.channel_stride  # c_in of output channel 0
            for c in range(g.channels // n_bins):
                out_roi[c * g.out_channel_stride + b * g.out_bin_stride] = (
                    bin_sum(plane, &scratch.table, per_sample, ph, pw, g.pooled_w) / count)
                plane += plane_step
    return True


cdef bint backward_share(const KernelCall* call, Scratch* scratch, Py_ssize_t item,
                         const floating* type_tag) noexcept nogil:
    """Backward: the gradient of one block of input channels of one image, from all its RoIs.

    Input channel c_in takes the gradient of one bin of each RoI only. Items own disjoint
    elements, and each element sums its contributions in torchvision's order (RoIs
    ascending, then samples, taps): deterministic for any thread count, no atomics.
    """
    cdef const Geometry* g = &call.g
    cdef BlockItem it = block_item(item, g.channels, call.block)
    cdef floating* grad_image = <floating*>call.result + it.image * g.image_stride
    cdef Py_ssize_t n_bins = g.pooled_h * g.pooled_w
    cdef Py_ssize_t j, k, c, b
    cdef RoIGrid grid
    cdef bint per_sample
    cdef const floating* grad_roi
    for j in range(call.image_first[it.image], call.image_first[it.image + 1]):
        k = call.roi_order[j]
        if not roi_samples(&scratch.table, <const floating*>call.boxes + 4 * k,
                           <floating>call.spatial_scale, g, &grid):
            return False
        per_sample = fits_sample_table(&scratch.table, g.pooled_h, g.pooled_w)
        grad_roi = <const floating*>call.values + k * g.out_roi_stride
        for c in range(it.first_channel, it.first_channel + it.n_channels):
            b = c % n_bins
            bin_scatter(grad_image + c * g.channel_stride, &scratch.table, per_sample,
                        b // g.pooled_w, b % g.pooled_w, g.pooled_w,
                        grad_roi[(c // n_bins) * g.out_channel_stride + b * g.out_bin_stride],
                        <floating>grid.count)
    return True


cdef Geometry ps_geometry(const Py_ssize_t* shape, bint channels_last, Py_ssize_t pooled_h,
                          Py_ssize_t pooled_w, Py_ssize_t sampling_ratio) noexcept nogil:
    """The Geometry of a map of C = C_out * PH * PW channels and its (K, C_out, PH, PW) or
    (K, PH, PW, C_out) output: roi_align's, but a channels-last bin holds C_out values."""
    cdef Geometry g = make_geometry(shape, channels_last, pooled_h, pooled_w, sampling_ratio,
                                    True)
    g.out_roi_stride = g.channels  # C_out * PH * PW
    if channels_last:
        g.out_bin_stride = g.channels // (pooled_h * pooled_w)
    return g


cdef Py_ssize_t run(const floating[:, :, :, ::1] values, const floating[:, ::1] boxes,
                    const Py_ssize_t[::1] batch_index, const Py_ssize_t[::1] roi_order,
                    const Py_ssize_t[::1] image_first, double spatial_scale, floating* result,
                    Geometry g, bint backward, Py_ssize_t block, Py_ssize_t first_item,
                    int n_threads):
    """Fill the KernelCall and run the work items of the chosen kernel, without the GIL."""
    cdef KernelCall call = kernel_call(g, &values[0, 0, 0, 0], result, NULL, &boxes[0, 0],
                                       batch_index, roi_order, image_first, spatial_scale, block)
    cdef ScratchSpec spec = scratch_spec(g.pooled_h, g.pooled_w, 0, 0)
    cdef Py_ssize_t n_items = n_block_items(&g, block)
    cdef Py_ssize_t done
    with nogil:
        if not backward:
            done = run_items(forward_roi[floating], &call, first_item, boxes.shape[0],
                             &spec, n_threads)
        else:
            done = run_items(backward_share[floating], &call, first_item, n_items,
                             &spec, n_threads)
    return done


def forward(const floating[:, :, :, ::1] features, bint channels_last,
            const floating[:, ::1] boxes, const Py_ssize_t[::1] batch_index,
            const Py_ssize_t[::1] roi_order, const Py_ssize_t[::1] image_first,
            double spatial_scale, Py_ssize_t pooled_height, Py_ssize_t pooled_width,
            Py_ssize_t sampling_ratio, floating[:, :, :, ::1] out, bint packed,
            Py_ssize_t block, Py_ssize_t first_item, int n_threads):
    """Position-sensitive RoIAlign forward into `out`, one time slice of it (see
    _work_items.run_items): the next item to run from first_item on, 0 when done, -1 when
    out of memory.

    features (N, C, H, W), or (N, H, W, C) when channels_last, C a multiple of PH * PW;
    out (K, C / (PH * PW), PH, PW) or (K, PH, PW, C / (PH * PW)). One work item per RoI
    (there is no packed variant: `packed` and `block` are unused).
    """
    cdef Geometry g = ps_geometry(features.shape, channels_last, pooled_height, pooled_width,
                                  sampling_ratio)
    return run(features, boxes, batch_index, roi_order, image_first, spatial_scale,
               &out[0, 0, 0, 0], g, False, block, first_item, n_threads)


def backward(const floating[:, :, :, ::1] grad_output, bint channels_last,
             const floating[:, ::1] boxes, const Py_ssize_t[::1] batch_index,
             const Py_ssize_t[::1] roi_order, const Py_ssize_t[::1] image_first,
             double spatial_scale, Py_ssize_t pooled_height, Py_ssize_t pooled_width,
             Py_ssize_t sampling_ratio, floating[:, :, :, ::1] grad_input, bint packed,
             Py_ssize_t block, Py_ssize_t first_item, int n_threads):
    """Gradient of ps_roi_align w.r.t. the features, accumulated into zeroed `grad_input`,
    one time slice of it (returns as forward does).

    Work items are (image, block of `block` input channels), RoIs grouped by image through
    roi_order/image_first: no two threads write the same element, no atomics.
    """
    cdef Geometry g = ps_geometry(grad_input.shape, channels_last, pooled_height,
                                  pooled_width, sampling_ratio)
    return run(grad_output, boxes, batch_index, roi_order, image_first, spatial_scale,
               &grad_input[0, 0, 0, 0], g, True, block, first_item, n_threads)


KERNELS = {"forward": forward, "backward": backward}
