# The multi-level (FPN) RoIAlign kernels (multiscale_roi_align, multiscale_roi_align_backward).
# Private: _multiscale_roi_align.py validates every argument and hands over private,
# canonical arrays (every level C-contiguous in its layout, one dtype, the boxes in it,
# batch indices checked, each RoI's level computed and checked), so nothing here re-checks
# them.
#
# One call pools every level: a LevelCall holds one Geometry, base pointer and scale per
# level, and each work item selects its RoI's level and runs roi_align's own per-RoI code
# (_roi_align_pool) on it, so every number is roi_align's on that level, bit for bit.

from libc.stdlib cimport free, malloc
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


cdef struct LevelCall:
    # One multi-level call. `call` comes first, so that run_items' KernelCall pointer is
    # this struct's pointer too. call.roi_order lists the RoIs grouped by (level, image);
    # call.image_first[level * N + image] is where that group starts (len L * N + 1).
    KernelCall call
    Py_ssize_t n_levels
    const Py_ssize_t* blocks       # (L,) channels per work item of each level ...
    Py_ssize_t* first_items        # (L + 1,) ... and where each level's items start
    const Py_ssize_t* level_of     # (K,) each RoI's level, in [0, L) or -1 (none: left 0)
    Geometry* g                    # (L,) per-level geometry
    const void** values            # (L,) per-level features (forward) ...
    void** results                 # (L,) ... or per-level gradients (backward)
    const double* scales           # (L,) spatial_scale of each level


cdef inline BlockItem level_item(const LevelCall* m, Py_ssize_t item,
                                 Py_ssize_t* level) noexcept nogil:
    """Decode work item `item` of a loop over (level, image, channel block): each level has
    its own block size (a cache-sized block of a small map holds more channels)."""
    cdef Py_ssize_t l = 0
    while item >= m.first_items[l + 1]:
        l += 1
    level[0] = l
    return block_item(item - m.first_items[l], m.call.g.channels, m.blocks[l])


cdef bint forward_roi(const KernelCall* call, Scratch* scratch, Py_ssize_t item,
                      const floating* type_tag) noexcept nogil:
    """Per-RoI forward: every channel of the item's RoI k (roi_of), from its level."""
    cdef const LevelCall* m = <const LevelCall*>call
    cdef Py_ssize_t k = roi_of(call, item)
    cdef Py_ssize_t level = m.level_of[k]
    cdef const Geometry* g
    if level < 0:
        return True  # no level: its rows were zeroed by the wrapper
    g = &m.g[level]
    return pool_roi(<const floating*>m.values[level] + call.batch_index[k] * g.image_stride,
                    <const floating*>call.boxes + 4 * k, <floating>m.scales[level],
                    <floating*>call.result + k * g.out_roi_stride, g, &scratch.table, False)


cdef bint forward_block(const KernelCall* call, Scratch* scratch, Py_ssize_t item,
                        const floating* type_tag) noexcept nogil:
    """Packed forward: pack one channel block of one image of one level, pool all the RoIs
    of that level and image from it (roi_align's forward_block, per level)."""
    cdef const LevelCall* m = <const LevelCall*>call
    cdef Py_ssize_t level
    cdef BlockItem it = level_item(m, item, &level)
    cdef const Geometry* g = &m.g[level]
    cdef Py_ssize_t group = level * call.g.n_images + it.image
    cdef floating* packed = <floating*>scratch.buffers[0]
    cdef floating* pooled = <floating*>scratch.buffers[1]
    cdef Py_ssize_t block = m.blocks[level]
    cdef Py_ssize_t last = call.image_first[group + 1]
    cdef Py_ssize_t j, k
    if call.image_first[group] == last:
        return True
    pack_block(<const floating*>m.values[level] + it.image * g.image_stride, g,
               it.first_channel, it.n_channels, packed, block)
    for j in range(resume_from(scratch, call.image_first[group]), last):
        k = call.roi_order[j]
        if not pool_packed_roi(packed, <const floating*>call.boxes + 4 * k,
                               <floating>m.scales[level], g, &scratch.table, pooled, False,
                               block):
            return False
        unpack_roi(pooled, <floating*>call.result + k * g.out_roi_stride, g, it.first_channel,
                   it.n_channels, block)
        if pause_at(scratch, j + 1, last):
            break
    return True


cdef bint backward_share(const KernelCall* call, Scratch* scratch, Py_ssize_t item,
                         const floating* type_tag) noexcept nogil:
    """Per-RoI backward: the gradient of one channel block of one image of one level, from
    all the RoIs of that level and image, in ascending order (roi_align's backward_share):
    items own disjoint elements, deterministic for any thread count."""
    cdef const LevelCall* m = <const LevelCall*>call
    cdef Py_ssize_t level
    cdef BlockItem it = level_item(m, item, &level)
    cdef const Geometry* g = &m.g[level]
    cdef Py_ssize_t group = level * call.g.n_images + it.image
    cdef floating* grad_image = <floating*>m.results[level] + it.image * g.image_stride
    cdef Py_ssize_t last = call.image_first[group + 1]
    cdef Py_ssize_t j, k
    for j in range(resume_from(scratch, call.image_first[group]), last):
        k = call.roi_order[j]
        if not unpool_roi(grad_image, <const floating*>call.values + k * g.out_roi_stride, NULL,
                          <const floating*>call.boxes + 4 * k, <floating>m.scales[level], g,
                          &scratch.table, False, it.first_channel,
                          it.first_channel + it.n_channels):
            return False
        if pause_at(scratch, j + 1, last):
            break
    return True


cdef bint backward_block(const KernelCall* call, Scratch* scratch, Py_ssize_t item,
                         const floating* type_tag) noexcept nogil:
    """Packed backward: accumulate the RoIs of one level and image into a cache-resident
    packed block, then write it out once (roi_align's backward_block, per level)."""
    cdef const LevelCall* m = <const LevelCall*>call
    cdef Py_ssize_t level
    cdef BlockItem it = level_item(m, item, &level)
    cdef const Geometry* g = &m.g[level]
    cdef Py_ssize_t group = level * call.g.n_images + it.image
    cdef floating* packed = <floating*>scratch.buffers[0]
    cdef floating* roi_grad = <floating*>scratch.buffers[1]
    cdef Py_ssize_t block = m.blocks[level]
    cdef floating* grad_image = <floating*>m.results[level] + it.image * g.image_stride
    cdef Py_ssize_t last = call.image_first[group + 1]
    cdef Py_ssize_t j, k
    if call.image_first[group] == last:
        return True  # no RoIs here: the zero gradient stays
    if scratch.resuming:  # the sums so far, saved when the item paused (exact copies)
        pack_block(grad_image, g, it.first_channel, it.n_channels, packed, block)
    else:
        memset(packed, 0, g.height * g.width * block * sizeof(floating))
    for j in range(resume_from(scratch, call.image_first[group]), last):
        k = call.roi_order[j]
        if not unpool_packed_roi(packed, <const floating*>call.values + k * g.out_roi_stride,
                                 roi_grad, <const floating*>call.boxes + 4 * k,
                                 <floating>m.scales[level], g, &scratch.table,
                                 it.first_channel, it.n_channels, block):
            return False
        if pause_at(scratch, j + 1, last):
            break
    unpack_block(packed, grad_image, g, it.first_channel, it.n_channels, block)
    return True


cdef Py_ssize_t run(const floating[:, :, :, ::1] values, const floating[:, ::1] boxes,
                    const Py_ssize_t[::1] batch_index, const Py_ssize_t[::1] roi_order,
                    const Py_ssize_t[::1] level_first, floating* result, list levels,
                    const Py_ssize_t[::1] level_of, const double[::1] scales,
                    const Py_ssize_t[::1] level_blocks, bint channels_last,
                    Py_ssize_t pooled_h, Py_ssize_t pooled_w, Py_ssize_t sampling_ratio,
                    bint aligned, bint backward, bint packed, Py_ssize_t block,
                    Py_ssize_t[::1] paused, Py_ssize_t first_item, int n_threads) except -2:
    """Fill the LevelCall and run the work items of the chosen kernel, without the GIL.

    levels: the per-level maps, read (forward) or written (backward), all of one dtype.
    """
    cdef Py_ssize_t n_levels = len(levels)
    cdef Py_ssize_t* paused_at = paused_list(paused, n_threads)
    cdef Py_ssize_t i, n_items, done
    cdef size_t largest = 0
    cdef size_t pixels
    cdef LevelCall m
    cdef ScratchSpec spec
    cdef const floating[:, :, :, ::1] read_view
    cdef floating[:, :, :, ::1] write_view
    cdef Geometry first
    m.g = <Geometry*>malloc(n_levels * sizeof(Geometry))
    m.values = <const void**>malloc(n_levels * sizeof(void*))
    m.results = <void**>malloc(n_levels * sizeof(void*))
    m.first_items = <Py_ssize_t*>malloc((n_levels + 1) * sizeof(Py_ssize_t))
    try:
        if m.g == NULL or m.values == NULL or m.results == NULL or m.first_items == NULL:
            return -1
        m.first_items[0] = 0
        for i in range(n_levels):
            if backward:  # the gradients, written
                write_view = levels[i]
                m.g[i] = make_geometry(write_view.shape, channels_last, pooled_h, pooled_w,
                                       sampling_ratio, aligned)
                m.values[i] = NULL
                m.results[i] = &write_view[0, 0, 0, 0]
            else:  # the features, read (they may be read-only)
                read_view = levels[i]
                m.g[i] = make_geometry(read_view.shape, channels_last, pooled_h, pooled_w,
                                       sampling_ratio, aligned)
                m.values[i] = &read_view[0, 0, 0, 0]
                m.results[i] = NULL
            pixels = m.g[i].height * m.g[i].width * level_blocks[i]
            if pixels > largest:
                largest = pixels
            m.first_items[i + 1] = m.first_items[i] + m.g[i].n_images * (
                (m.g[i].channels + level_blocks[i] - 1) // level_blocks[i])
        first = m.g[0]
        m.call = kernel_call(first, &values[0, 0, 0, 0], result, NULL, &boxes[0, 0],
                             batch_index, roi_order, level_first, 1.0, block)
        m.n_levels = n_levels
        m.blocks = &level_blocks[0]
        m.level_of = &level_of[0]
        m.scales = &scales[0]
        if packed:  # the largest level's block, and one RoI's pooled block (block: the widest)
            spec = scratch_spec(pooled_h, pooled_w, largest * sizeof(floating),
                                pooled_h * pooled_w * block * sizeof(floating))
        else:
            spec = scratch_spec(pooled_h, pooled_w, 0, 0)
        n_items = m.first_items[n_levels]
        with nogil:
            if not backward and not packed:
                done = run_items(forward_roi[floating], &m.call, first_item, boxes.shape[0],
                                 &spec, n_threads)
            elif not backward:
                done = run_items(forward_block[floating], &m.call, first_item, n_items,
                                 &spec, n_threads, paused_at)
            elif not packed:
                done = run_items(backward_share[floating], &m.call, first_item, n_items,
                                 &spec, n_threads, paused_at)
            else:
                done = run_items(backward_block[floating], &m.call, first_item, n_items,
                                 &spec, n_threads, paused_at)
        return done
    finally:
        free(m.g)
        free(<void*>m.values)
        free(m.results)
        free(m.first_items)


def forward(const floating[:, :, :, ::1] features, bint channels_last,
            const floating[:, ::1] boxes, const Py_ssize_t[::1] batch_index,
            const Py_ssize_t[::1] roi_order, const Py_ssize_t[::1] level_first,
            double spatial_scale, Py_ssize_t pooled_height, Py_ssize_t pooled_width,
            Py_ssize_t sampling_ratio, bint aligned, list levels,
            const Py_ssize_t[::1] level_of, const double[::1] scales,
            const Py_ssize_t[::1] level_blocks, floating[:, :, :, ::1] out, bint packed,
            Py_ssize_t block, Py_ssize_t[::1] paused, Py_ssize_t first_item, int n_threads):
    """Multi-level RoIAlign forward into `out`, one time slice of it (as roi_align's
    forward: the next item to run, 0 when done, -1 when out of memory).

    features: the finest level (levels[0]; it fixes the dtype). levels: every level, (N, C,
    H_l, W_l) or (N, H_l, W_l, C). RoI k is pooled from levels[level_of[k]] with
    scales[level_of[k]] (level -1: skipped). Per RoI unless `packed`: then work items are
    (level, image, block of level_blocks[level] channels), roi_order/level_first grouping
    the RoIs by (level, image); `block` is the widest of level_blocks. Per RoI, roi_order
    (level_first None) is the order to pool the RoIs in, or None for 0..K-1. spatial_scale
    is unused (the family's argument order).
    """
    return run(features, boxes, batch_index, roi_order, level_first, &out[0, 0, 0, 0],
               levels, level_of, scales, level_blocks, channels_last, pooled_height,
               pooled_width, sampling_ratio, aligned, False, packed, block, paused, first_item,
               n_threads)


def backward(const floating[:, :, :, ::1] grad_output, bint channels_last,
             const floating[:, ::1] boxes, const Py_ssize_t[::1] batch_index,
             const Py_ssize_t[::1] roi_order, const Py_ssize_t[::1] level_first,
             double spatial_scale, Py_ssize_t pooled_height, Py_ssize_t pooled_width,
             Py_ssize_t sampling_ratio, bint aligned, list grad_levels,
             const Py_ssize_t[::1] level_of, const double[::1] scales,
             const Py_ssize_t[::1] level_blocks, bint packed, Py_ssize_t block,
             Py_ssize_t[::1] paused, Py_ssize_t first_item, int n_threads):
    """Gradient of the multi-level forward w.r.t. every level, accumulated into the zeroed
    per-level arrays `grad_levels`, one time slice of it (returns as forward does).

    Work items are (level, image, block of level_blocks[level] channels; `block` the
    widest): no two threads write the
    same element, no atomics; each element sums its RoIs in ascending order, as
    roi_align_backward on that level does.
    """
    return run(grad_output, boxes, batch_index, roi_order, level_first, <floating*>NULL,
               grad_levels, level_of, scales, level_blocks, channels_last, pooled_height, pooled_width, sampling_ratio, aligned,
               True, packed, block, paused, first_item, n_threads)


KERNELS = {"forward": forward, "backward": backward}
