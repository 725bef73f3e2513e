# The position-sensitive RoIAlign kernels (ps_roi_align, ps_roi_align_backward; R-FCN,
# Light-Head R-CNN). Output bin (c, ph, pw) of a RoI reads only input channel
# c_in = (c * PH + ph) * PW + pw, with roi_align's aligned geometry (offset 0.5, no 1x1
# clamp) and average. Private: _ps_roi_align.py validates every argument (input channels a
# multiple of PH * PW) and hands over private, canonical arrays. Each entry point fills a
# KernelCall and runs its work items through _work_items.run_items.
#
# Each RoI's axis tables (_sample_table) are built once and serve every output channel: a
# bin's samples sit at the same pixels in every channel plane, only the plane changes with
# c. So the loops run bins, then samples (each sample's 4 taps formed once), then the bin's
# output channels, innermost: no per-sample table is needed. Those channels are PH * PW
# planes apart; the packed kernels (forward_packed on channels-first maps, backward_packed)
# copy a cache-sized group of bins' planes pixel-major first, so that a tap's channels are
# one contiguous vector run, and reuse the RoIs' axis tables from a RoI cache.

from libc.math cimport frexp
from libc.string cimport memcpy, memset

from roialign_cy._channel_blocks cimport BlockItem, block_item, transpose_planes
from roialign_cy._kernel_call cimport (
    Geometry,
    KernelCall,
    kernel_call,
    make_geometry,
    n_block_items,
)
from roialign_cy._sample_table cimport (
    AxisSample,
    RoIGrid,
    SampleTable,
    build_axis_tables,
    floating,
    sample_taps,
)
from roialign_cy._work_items cimport (
    Scratch,
    ScratchSpec,
    pause_at,
    paused_list,
    resume_from,
    run_items,
    scratch_spec,
)


# The packed backward (backward_packed) accumulates a group of bins at a time in a buffer of
# about GROUP_BYTES (a core's share of the caches), and keeps the axis tables of the image's
# RoIs in a cache of ROI_CACHE_BYTES (only the part used is touched). An image whose RoIs'
# tables do not fit it, or a map so big that one bin's buffer passes MAX_GROUP_BYTES, takes
# backward_share instead. Memory stays bounded whatever the map and the boxes.
cdef enum:
    GROUP_BYTES = 1 << 20
    MAX_GROUP_BYTES = 16 << 20
    ROI_CACHE_BYTES = 16 << 20


cdef inline bint roi_samples(SampleTable* table, const floating* box, floating spatial_scale,
                             const Geometry* g, Py_ssize_t row_stride, Py_ssize_t col_stride,
                             RoIGrid* grid) noexcept nogil:
    """One RoI's axis tables (aligned geometry) on a map with these strides (the features',
    or a packed buffer's). False when out of memory."""
    return build_axis_tables(table, box, spatial_scale, True, g.pooled_h, g.pooled_w,
                             g.sampling_ratio, g.height, g.width, row_stride, col_stride,
                             False, grid)


cdef inline Py_ssize_t bin_channels(Py_ssize_t b, Py_ssize_t n_bins, Py_ssize_t c0,
                                    Py_ssize_t c1, Py_ssize_t* first_out) noexcept nogil:
    """How many output channels c of bin b have their input channel c * n_bins + b in
    [c0, c1), the first of them in first_out."""
    first_out[0] = (c0 - b + n_bins - 1) // n_bins if c0 > b else 0
    return ((c1 - b + n_bins - 1) // n_bins if c1 > b else 0) - first_out[0]


cdef inline void add_sample(floating* acc, const floating* plane, Py_ssize_t plane_step,
                            Py_ssize_t n, const Py_ssize_t* offsets,
                            const floating* weights) noexcept nogil:
    """acc[c] += the bilinear value of one sample on plane c (plane + c * plane_step), for
    the n output channels of one bin: torchvision's w1*v1 + w2*v2 + w3*v3 + w4*v4, then its
    out_sum += val. The taps are the same in every plane, so they stay in registers while
    the channel loop runs (each channel still sums its own samples in order)."""
    cdef Py_ssize_t c
    cdef Py_ssize_t o1 = offsets[0], o2 = offsets[1], o3 = offsets[2], o4 = offsets[3]
    cdef floating w1 = weights[0], w2 = weights[1], w3 = weights[2], w4 = weights[3]
    cdef const floating* p
    for c in range(n):
        p = plane + c * plane_step
        acc[c] = acc[c] + (w1 * p[o1] + w2 * p[o2] + w3 * p[o3] + w4 * p[o4])


cdef inline void add_four_samples(floating* acc, const floating* plane, Py_ssize_t plane_step,
                                  Py_ssize_t n, const Py_ssize_t* o,
                                  const floating* w) noexcept nogil:
    """add_sample for four consecutive samples (taps o[4 * s + t], w[4 * s + t]), one pass
    over the channels: acc[c] + v0 + v1 + v2 + v3 in that order, as four add_sample calls
    would sum them, with acc[c] read and written once."""
    cdef Py_ssize_t c
    cdef const floating* p
    cdef floating a
    for c in range(n):
        p = plane + c * plane_step
        a = acc[c] + (w[0] * p[o[0]] + w[1] * p[o[1]] + w[2] * p[o[2]] + w[3] * p[o[3]])
        a = a + (w[4] * p[o[4]] + w[5] * p[o[5]] + w[6] * p[o[6]] + w[7] * p[o[7]])
        a = a + (w[8] * p[o[8]] + w[9] * p[o[9]] + w[10] * p[o[10]] + w[11] * p[o[11]])
        acc[c] = a + (w[12] * p[o[12]] + w[13] * p[o[13]] + w[14] * p[o[14]]
                      + w[15] * p[o[15]])


cdef inline void form_shares(floating* share, Py_ssize_t n, const floating* grad, floating w,
                             floating count, floating inverse_count) noexcept nogil:
    """share[c] = torchvision's grad[c] * w / count, in a vector loop. inverse_count:
    1 / count when count is a power of two (x * (1 / count) is then x / count, bit for bit,
    and much cheaper), else 0."""
    cdef Py_ssize_t c
    if inverse_count != 0:
        for c in range(n):
            share[c] = grad[c] * w * inverse_count
    else:
        for c in range(n):
            share[c] = grad[c] * w / count


cdef inline floating exact_inverse(floating count) noexcept nogil:
    """1 / count when that is exact (count a power of two, the usual sampling_ratio 2 or 4
    grid), else 0."""
    cdef int exponent
    if frexp(<double>count, &exponent) != 0.5:
        return 0
    return <floating>1 / count


cdef inline bint pool_roi(const KernelCall* call, Scratch* scratch, Py_ssize_t k,
                          Py_ssize_t c0, Py_ssize_t c1, const floating* type_tag) noexcept nogil:
    """Forward of RoI k for the output bins whose input channel lies in [c0, c1), reading
    the map in place. Bins outer, then samples in torchvision's order (iy outer, ix inner),
    then the bin's output channels (one plane each, PH * PW planes apart)."""
    cdef const Geometry* g = &call.g
    cdef SampleTable* table = &scratch.table
    cdef const floating* image = <const floating*>call.values + call.batch_index[k] * g.image_stride
    cdef floating* out_roi = <floating*>call.result + k * g.out_roi_stride
    cdef floating* acc = <floating*>scratch.buffers[0]
    cdef Py_ssize_t n_bins = g.pooled_h * g.pooled_w
    cdef Py_ssize_t plane_step = n_bins * g.channel_stride  # from c_in to c_in + PH * PW
    cdef Py_ssize_t ph, pw, b, c, iy, ix, m, n, first_out
    cdef Py_ssize_t offsets[16]
    cdef floating weights[16]
    cdef const floating* plane
    cdef floating* out_bin
    cdef RoIGrid grid
    cdef floating count
    if not roi_samples(table, <const floating*>call.boxes + 4 * k,
                       <floating>call.spatial_scale, g, g.row_stride, g.col_stride, &grid):
        return False
    count = <floating>grid.count
    for ph in range(g.pooled_h):
        for pw in range(g.pooled_w):
            b = ph * g.pooled_w + pw
            n = bin_channels(b, n_bins, c0, c1, &first_out)
            if n <= 0:
                continue
            plane = image + (first_out * n_bins + b) * g.channel_stride
            for c in range(n):
                acc[c] = 0
            m = 0  # samples whose taps are held, up to 4: summed four at a time
            for iy in range(table.y_first[ph], table.y_first[ph + 1]):
                for ix in range(table.x_first[pw], table.x_first[pw + 1]):
                    sample_taps(&table.y_samples[iy], &table.x_samples[ix], False,
                                &offsets[4 * m], &weights[4 * m])
                    m += 1
                    if m == 4:
                        add_four_samples(acc, plane, plane_step, n, offsets, weights)
                        m = 0
            for iy in range(m):  # the last 1 to 3, in order
                add_sample(acc, plane, plane_step, n, &offsets[4 * iy], &weights[4 * iy])
            out_bin = out_roi + b * g.out_bin_stride + first_out * g.out_channel_stride
            for c in range(n):
                out_bin[c * g.out_channel_stride] = acc[c] / count
    return True


cdef bint forward_roi(const KernelCall* call, Scratch* scratch, Py_ssize_t k,
                      const floating* type_tag) noexcept nogil:
    """Forward, work item k: every bin of every output channel of RoI k (maps too big for
    forward_packed's buffers)."""
    return pool_roi(call, scratch, k, 0, call.g.channels, type_tag)


cdef inline void gather_grad(floating* grad, const KernelCall* call, Py_ssize_t k,
                             Py_ssize_t b, Py_ssize_t first_out, Py_ssize_t n) noexcept nogil:
    """grad[j] = grad_output of RoI k, output channel first_out + j, bin b, for j < n."""
    cdef const Geometry* g = &call.g
    cdef const floating* grad_bin = (<const floating*>call.values + k * g.out_roi_stride
                                     + b * g.out_bin_stride + first_out * g.out_channel_stride)
    cdef Py_ssize_t j
    for j in range(n):
        grad[j] = grad_bin[j * g.out_channel_stride]


cdef bint backward_share(const KernelCall* call, Scratch* scratch, Py_ssize_t item,
                         const floating* type_tag) noexcept nogil:
    """Backward: the gradient of one block of input channels of one image, from all its RoIs,
    added straight into the map (for maps too big for backward_packed's buffer).

    Input channel c_in takes the gradient of one bin of each RoI only. Items own disjoint
    elements, and each element sums its contributions in torchvision's order (RoIs
    ascending, then samples, taps): deterministic for any thread count, no atomics.
    """
    cdef const Geometry* g = &call.g
    cdef SampleTable* table = &scratch.table
    cdef BlockItem it = block_item(item, g.channels, call.block)
    cdef floating* grad_image = <floating*>call.result + it.image * g.image_stride
    cdef floating* grad = <floating*>scratch.buffers[0]
    cdef Py_ssize_t n_bins = g.pooled_h * g.pooled_w
    cdef Py_ssize_t plane_step = n_bins * g.channel_stride
    cdef floating* share = grad + g.channels // n_bins
    cdef Py_ssize_t j, k, c, b, ph, pw, iy, ix, t, first_out, n
    cdef Py_ssize_t offsets[4]
    cdef floating weights[4]
    cdef RoIGrid grid
    cdef floating count, inverse_count
    cdef floating* grad_plane
    cdef Py_ssize_t last = call.image_first[it.image + 1]
    for j in range(resume_from(scratch, call.image_first[it.image]), last):
        k = call.roi_order[j]
        if not roi_samples(table, <const floating*>call.boxes + 4 * k,
                           <floating>call.spatial_scale, g, g.row_stride, g.col_stride, &grid):
            return False
        count = <floating>grid.count
        inverse_count = exact_inverse(count)
        for ph in range(g.pooled_h):
            for pw in range(g.pooled_w):
                b = ph * g.pooled_w + pw
                n = bin_channels(b, n_bins, it.first_channel,
                                 it.first_channel + it.n_channels, &first_out)
                if n <= 0:
                    continue
                gather_grad(grad, call, k, b, first_out, n)
                grad_plane = grad_image + (first_out * n_bins + b) * g.channel_stride
                for iy in range(table.y_first[ph], table.y_first[ph + 1]):
                    for ix in range(table.x_first[pw], table.x_first[pw + 1]):
                        sample_taps(&table.y_samples[iy], &table.x_samples[ix], False,
                                    offsets, weights)
                        for t in range(4):  # tap by tap: two may be one element (borders)
                            form_shares(share, n, grad, weights[t], count, inverse_count)
                            for c in range(n):
                                grad_plane[c * plane_step + offsets[t]] += share[c]
        if pause_at(scratch, j + 1, last):
            break
    return True


cdef inline Py_ssize_t packed_width(const Geometry* g, Py_ssize_t block) noexcept nogil:
    """Output channels per pixel of a packed bin: the most a block of `block` input channels
    holds of one bin."""
    cdef Py_ssize_t n_bins = g.pooled_h * g.pooled_w
    return (block + n_bins - 1) // n_bins


cdef inline Py_ssize_t group_bins(const Geometry* g, Py_ssize_t block,
                                  Py_ssize_t itemsize) noexcept nogil:
    """Bins per packed group: as many as fit GROUP_BYTES (at least one)."""
    cdef Py_ssize_t bin_bytes = g.height * g.width * packed_width(g, block) * itemsize
    cdef Py_ssize_t n = GROUP_BYTES // bin_bytes if bin_bytes > 0 else 1
    return n if n > 1 else 1


cdef inline char* cache_roi(char* cache, char* cache_end, const SampleTable* table,
                            const Geometry* g, floating count) noexcept nogil:
    """Append one RoI's axis tables to the RoI cache: count, y_first (PH + 1), x_first
    (PW + 1), then its y and x samples. The end of the record, NULL when it does not fit."""
    cdef Py_ssize_t n_y = table.y_first[g.pooled_h]
    cdef Py_ssize_t n_x = table.x_first[g.pooled_w]
    cdef size_t n_bytes = (sizeof(double) + (g.pooled_h + g.pooled_w + 2) * sizeof(Py_ssize_t)
                           + (n_y + n_x) * sizeof(AxisSample))
    if <size_t>(cache_end - cache) < n_bytes:
        return NULL
    (<double*>cache)[0] = count
    cache += sizeof(double)
    memcpy(cache, table.y_first, (g.pooled_h + 1) * sizeof(Py_ssize_t))
    cache += (g.pooled_h + 1) * sizeof(Py_ssize_t)
    memcpy(cache, table.x_first, (g.pooled_w + 1) * sizeof(Py_ssize_t))
    cache += (g.pooled_w + 1) * sizeof(Py_ssize_t)
    # memcpy from NULL is undefined even for 0 bytes, and an empty axis has no samples array
    if n_y > 0:
        memcpy(cache, table.y_samples, n_y * sizeof(AxisSample))
    cache += n_y * sizeof(AxisSample)
    if n_x > 0:
        memcpy(cache, table.x_samples, n_x * sizeof(AxisSample))
    return cache + n_x * sizeof(AxisSample)


cdef struct CachedRoI:
    # One RoI's axis tables as a record of the RoI cache holds them (cache_roi).
    double count
    const Py_ssize_t* y_first
    const Py_ssize_t* x_first
    const AxisSample* y_samples
    const AxisSample* x_samples


cdef inline char* read_roi(char* record, const Geometry* g, CachedRoI* roi) noexcept nogil:
    """The RoI cache's record at `record` (cache_roi's layout) into roi; the next record."""
    roi.count = (<double*>record)[0]
    roi.y_first = <const Py_ssize_t*>(record + sizeof(double))
    roi.x_first = roi.y_first + g.pooled_h + 1
    roi.y_samples = <const AxisSample*>(roi.x_first + g.pooled_w + 1)
    roi.x_samples = roi.y_samples + roi.y_first[g.pooled_h]
    return <char*>(roi.x_samples + roi.x_first[g.pooled_w])


cdef inline void copy_group(floating* grad_image, floating* packed, const Geometry* g,
                            Py_ssize_t b0, Py_ssize_t b1, Py_ssize_t c0, Py_ssize_t c1,
                            Py_ssize_t width, bint to_packed) noexcept nogil:
    """Copy the packed gradients of bins [b0, b1) to the item's planes of grad_image
    (to_packed False: a group written out), or back (True: a paused group's sums, resumed).
    Exact copies both ways."""
    cdef Py_ssize_t n_bins = g.pooled_h * g.pooled_w
    cdef Py_ssize_t n_pixels = g.height * g.width
    cdef Py_ssize_t bin_size = n_pixels * width
    cdef Py_ssize_t b, c, n, first_out, pixel
    cdef floating* channel
    cdef floating* row
    if g.channels_last:  # pixel by pixel: each pixel's channels of the group at once
        for pixel in range(n_pixels):
            for b in range(b0, b1):
                n = bin_channels(b, n_bins, c0, c1, &first_out)
                channel = grad_image + pixel * g.col_stride + first_out * n_bins + b
                row = packed + (b - b0) * bin_size + pixel * width
                for c in range(n):
                    if to_packed:
                        row[c] = channel[c * n_bins]
                    else:
                        channel[c * n_bins] = row[c]
        return
    for b in range(b0, b1):  # channels-first: each bin's n planes, n_bins planes apart
        n = bin_channels(b, n_bins, c0, c1, &first_out)
        if n > 0:
            transpose_planes(grad_image + (first_out * n_bins + b) * g.channel_stride,
                             n_bins * g.channel_stride, packed + (b - b0) * bin_size,
                             width, n, n_pixels, to_packed)


cdef bint backward_packed(const KernelCall* call, Scratch* scratch, Py_ssize_t item,
                          const floating* type_tag) noexcept nogil:
    """backward_share through small packed buffers: bins are taken a group at a time (a
    cache-sized buffer); for bin b the buffer holds the (H*W, width) gradient of the block's
    output channels whose plane c * PH * PW + b the item owns, pixel-major, so that each tap
    adds one contiguous run of values (vector loops) instead of touching a value in each of
    n planes. Each group is written out once, after all the image's RoIs. The RoIs' axis
    tables are built once, into a RoI cache, and reread by every group; when they do not fit
    it (huge grids), the item runs as backward_share. Every element sums the same
    contributions in the same order (RoIs ascending, samples, taps) from 0: bit-identical to
    backward_share, and to torchvision.

    The item's steps are (group, RoI) pairs, step b0 * n_rois + r for RoI r of the group
    starting at bin b0: a paused item writes its group's sums out, and reads them back when
    it resumes (exact copies, so the sums go on unchanged).
    """
    cdef const Geometry* g = &call.g
    cdef SampleTable* table = &scratch.table
    cdef BlockItem it = block_item(item, g.channels, call.block)
    cdef floating* grad_image = <floating*>call.result + it.image * g.image_stride
    cdef Py_ssize_t n_bins = g.pooled_h * g.pooled_w
    cdef Py_ssize_t width = packed_width(g, call.block)
    cdef Py_ssize_t bin_size = g.height * g.width * width
    cdef Py_ssize_t per_group = group_bins(g, call.block, sizeof(floating))
    cdef Py_ssize_t first = call.image_first[it.image]
    cdef Py_ssize_t n_rois = call.image_first[it.image + 1] - first
    cdef Py_ssize_t step = resume_from(scratch, 0)
    cdef floating* grad = <floating*>scratch.buffers[0]
    cdef floating* share = grad + width
    cdef floating* packed = <floating*>scratch.buffers[1]
    cdef char* cache = <char*>scratch.buffers[2]
    cdef char* cache_end = cache + ROI_CACHE_BYTES
    cdef char* record
    cdef Py_ssize_t c0 = it.first_channel
    cdef Py_ssize_t c1 = it.first_channel + it.n_channels
    cdef Py_ssize_t j, k, c, b, b0, b1, r, ph, pw, iy, ix, t, first_out, n
    cdef Py_ssize_t offsets[4]
    cdef floating weights[4]
    cdef RoIGrid grid
    cdef CachedRoI roi
    cdef floating count, inverse_count
    cdef floating* packed_bin
    cdef floating* row
    if n_rois == 0:
        return True  # an image without RoIs keeps its zero gradient
    record = cache
    for j in range(first, first + n_rois):
        k = call.roi_order[j]
        # taps as offsets into a packed bin: pixel (y, x) at (y * W + x) * width
        if not roi_samples(table, <const floating*>call.boxes + 4 * k,
                           <floating>call.spatial_scale, g, g.width * width, width, &grid):
            return False
        record = cache_roi(record, cache_end, table, g, <floating>grid.count)
        if record == NULL:  # the RoIs' tables do not fit the cache (steps: backward_share's)
            return backward_share(call, scratch, item, type_tag)
    b1 = step // n_rois
    while b1 < n_bins:  # bins [b0, b1): one group
        b0 = b1
        b1 = b0 + per_group if b0 + per_group < n_bins else n_bins
        record = cache
        if step > b0 * n_rois:  # resumed inside this group: its sums so far, and its RoIs
            copy_group(grad_image, packed, g, b0, b1, c0, c1, width, True)
            for r in range(step - b0 * n_rois):
                record = read_roi(record, g, &roi)
        else:
            memset(packed, 0, (b1 - b0) * bin_size * sizeof(floating))
        for r in range(step - b0 * n_rois if step > b0 * n_rois else 0, n_rois):
            k = call.roi_order[first + r]
            record = read_roi(record, g, &roi)
            count = <floating>roi.count
            inverse_count = exact_inverse(count)
            for b in range(b0, b1):
                n = bin_channels(b, n_bins, c0, c1, &first_out)
                if n <= 0:
                    continue
                ph = b // g.pooled_w
                pw = b % g.pooled_w
                gather_grad(grad, call, k, b, first_out, n)
                packed_bin = packed + (b - b0) * bin_size
                for iy in range(roi.y_first[ph], roi.y_first[ph + 1]):
                    for ix in range(roi.x_first[pw], roi.x_first[pw + 1]):
                        sample_taps(&roi.y_samples[iy], &roi.x_samples[ix], False, offsets,
                                    weights)
                        for t in range(4):  # tap by tap: two may be one pixel (borders)
                            form_shares(share, n, grad, weights[t], count, inverse_count)
                            row = packed_bin + offsets[t]
                            for c in range(n):
                                row[c] += share[c]
            if pause_at(scratch, b0 * n_rois + r + 1, (b0 + 1) * n_rois):
                copy_group(grad_image, packed, g, b0, b1, c0, c1, width, False)
                return True
        copy_group(grad_image, packed, g, b0, b1, c0, c1, width, False)
        step = b1 * n_rois
        if pause_at(scratch, step, n_bins * n_rois):
            return True
    return True


cdef bint forward_packed(const KernelCall* call, Scratch* scratch, Py_ssize_t item,
                         const floating* type_tag) noexcept nogil:
    """Forward for one block of input channels of one image, from packed copies: a group of
    bins at a time (a cache-sized buffer), bin b's planes of the block are copied pixel-major
    (H*W, width), so that each tap reads one contiguous run of output channels (vector
    loops) instead of a value in each of n planes; then every RoI of the image pools the
    group's bins from them. The RoIs' axis tables are built once, into the RoI cache; when
    they do not fit it, the item pools RoI by RoI from the map (pool_roi). Each output sums
    its samples in torchvision's order: bit-identical to forward_roi.
    """
    cdef const Geometry* g = &call.g
    cdef SampleTable* table = &scratch.table
    cdef BlockItem it = block_item(item, g.channels, call.block)
    cdef const floating* image = <const floating*>call.values + it.image * g.image_stride
    cdef Py_ssize_t n_bins = g.pooled_h * g.pooled_w
    cdef Py_ssize_t n_pixels = g.height * g.width
    cdef Py_ssize_t width = packed_width(g, call.block)
    cdef Py_ssize_t bin_size = n_pixels * width
    cdef Py_ssize_t per_group = group_bins(g, call.block, sizeof(floating))
    cdef floating* acc = <floating*>scratch.buffers[0]
    cdef floating* packed = <floating*>scratch.buffers[1]
    cdef char* cache = <char*>scratch.buffers[2]
    cdef char* cache_end = cache + ROI_CACHE_BYTES
    cdef char* record
    cdef Py_ssize_t c0 = it.first_channel
    cdef Py_ssize_t c1 = it.first_channel + it.n_channels
    cdef Py_ssize_t j, k, c, b, b0, b1, ph, pw, iy, ix, first_out, n, pixel
    cdef Py_ssize_t offsets[4]
    cdef floating weights[4]
    cdef RoIGrid grid
    cdef floating count, w1, w2, w3, w4
    cdef CachedRoI roi
    cdef const floating* packed_bin
    cdef const floating* p1
    cdef const floating* p2
    cdef const floating* p3
    cdef const floating* p4
    cdef const floating* channel
    cdef floating* row
    cdef floating* out_bin
    if call.image_first[it.image] == call.image_first[it.image + 1]:
        return True
    record = cache
    for j in range(call.image_first[it.image], call.image_first[it.image + 1]):
        k = call.roi_order[j]
        # taps as offsets into a packed bin: pixel (y, x) at (y * W + x) * width
        if not roi_samples(table, <const floating*>call.boxes + 4 * k,
                           <floating>call.spatial_scale, g, g.width * width, width, &grid):
            return False
        record = cache_roi(record, cache_end, table, g, <floating>grid.count)
        if record == NULL:  # the RoIs' tables do not fit the cache: RoI by RoI
            for j in range(call.image_first[it.image], call.image_first[it.image + 1]):
                if not pool_roi(call, scratch, call.roi_order[j], c0, c1, type_tag):
                    return False
            return True
    b1 = 0
    while b1 < n_bins:  # bins [b0, b1): one group
        b0 = b1
        b1 = b0 + per_group if b0 + per_group < n_bins else n_bins
        for b in range(b0, b1):  # copy the group's planes, pixel-major
            n = bin_channels(b, n_bins, c0, c1, &first_out)
            if n <= 0:
                continue
            row = packed + (b - b0) * bin_size
            channel = image + (first_out * n_bins + b) * g.channel_stride
            if not g.channels_last:
                transpose_planes(<floating*>channel, n_bins * g.channel_stride, row, width, n,
                                 n_pixels, True)
                continue
            for pixel in range(n_pixels):  # (run() only picks this kernel channels-first)
                for c in range(n):
                    row[pixel * width + c] = channel[pixel * g.col_stride + c * n_bins]
        record = cache
        for j in range(call.image_first[it.image], call.image_first[it.image + 1]):
            k = call.roi_order[j]
            record = read_roi(record, g, &roi)
            count = <floating>roi.count
            for b in range(b0, b1):
                n = bin_channels(b, n_bins, c0, c1, &first_out)
                if n <= 0:
                    continue
                ph = b // g.pooled_w
                pw = b % g.pooled_w
                packed_bin = packed + (b - b0) * bin_size
                for c in range(n):
                    acc[c] = 0
                for iy in range(roi.y_first[ph], roi.y_first[ph + 1]):
                    for ix in range(roi.x_first[pw], roi.x_first[pw + 1]):
                        sample_taps(&roi.y_samples[iy], &roi.x_samples[ix], False, offsets,
                                    weights)
                        p1 = packed_bin + offsets[0]
                        p2 = packed_bin + offsets[1]
                        p3 = packed_bin + offsets[2]
                        p4 = packed_bin + offsets[3]
                        w1, w2, w3, w4 = weights[0], weights[1], weights[2], weights[3]
                        for c in range(n):  # contiguous: vectorizes
                            acc[c] = acc[c] + (w1 * p1[c] + w2 * p2[c] + w3 * p3[c] + w4 * p4[c])
                out_bin = (<floating*>call.result + k * g.out_roi_stride + b * g.out_bin_stride
                           + first_out * g.out_channel_stride)
                for c in range(n):
                    out_bin[c * g.out_channel_stride] = acc[c] / count
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
                    Geometry g, bint backward, bint packed_forward, Py_ssize_t block,
                    Py_ssize_t[::1] paused, Py_ssize_t first_item, int n_threads):
    """Fill the KernelCall and run the work items of the chosen kernel, without the GIL.

    packed_forward: the forward may use forward_packed (the wrapper says no for long calls,
    whose work items must be RoIs to run in time slices: forward_packed does not pause).
    """
    cdef KernelCall call = kernel_call(g, &values[0, 0, 0, 0], result, NULL, &boxes[0, 0],
                                       batch_index, roi_order, image_first, spatial_scale, block)
    cdef Py_ssize_t n_out = g.channels // (g.pooled_h * g.pooled_w)
    cdef size_t group_bytes = (group_bins(&g, block, sizeof(floating)) * g.height * g.width
                               * packed_width(&g, block) * sizeof(floating))
    # Channels-last maps are pooled in place by the forward: copying a bin's channels out of
    # every pixel (they are PH * PW apart) costs more than it saves there.
    cdef bint packed = group_bytes <= MAX_GROUP_BYTES and (
        backward or packed_forward and not g.channels_last)
    cdef ScratchSpec spec
    cdef Py_ssize_t n_items = n_block_items(&g, block)
    cdef Py_ssize_t* paused_at = paused_list(paused, n_threads)
    cdef Py_ssize_t done
    # axis tables; one bin's accumulators (forward) or gradients and shares (backward), for
    # either kernel; the packed kernels' group of bins and RoI cache
    spec = scratch_spec(g.pooled_h, g.pooled_w,
                        2 * max(packed_width(&g, block), n_out) * sizeof(floating),
                        group_bytes if packed else 0, ROI_CACHE_BYTES if packed else 0)
    with nogil:
        if not backward and packed:
            done = run_items(forward_packed[floating], &call, first_item, n_items,
                             &spec, n_threads)
        elif not backward:
            done = run_items(forward_roi[floating], &call, first_item, boxes.shape[0],
                             &spec, n_threads)
        elif packed:
            done = run_items(backward_packed[floating], &call, first_item, n_items,
                             &spec, n_threads, paused_at)
        else:
            done = run_items(backward_share[floating], &call, first_item, n_items,
                             &spec, n_threads, paused_at)
    return done


def forward(const floating[:, :, :, ::1] features, bint channels_last,
            const floating[:, ::1] boxes, const Py_ssize_t[::1] batch_index,
            const Py_ssize_t[::1] roi_order, const Py_ssize_t[::1] image_first,
            double spatial_scale, Py_ssize_t pooled_height, Py_ssize_t pooled_width,
            Py_ssize_t sampling_ratio, floating[:, :, :, ::1] out, bint packed,
            Py_ssize_t block, Py_ssize_t[::1] paused, Py_ssize_t first_item, int n_threads):
    """Position-sensitive RoIAlign forward into `out`, one time slice of it (see
    _work_items.run_items): the next item to run from first_item on, 0 when done, -1 when
    out of memory.

    features (N, C, H, W), or (N, H, W, C) when channels_last, C a multiple of PH * PW;
    out (K, C / (PH * PW), PH, PW) or (K, PH, PW, C / (PH * PW)). With `packed`, on a
    channels-first map that fits the packed buffers, work items are (image, block of `block`
    input channels), roi_order/image_first grouping the RoIs by image (forward_packed);
    otherwise RoIs, read in place (forward_roi).
    """
    cdef Geometry g = ps_geometry(features.shape, channels_last, pooled_height, pooled_width,
                                  sampling_ratio)
    return run(features, boxes, batch_index, roi_order, image_first, spatial_scale,
               &out[0, 0, 0, 0], g, False, packed, block, paused, first_item, n_threads)


def backward(const floating[:, :, :, ::1] grad_output, bint channels_last,
             const floating[:, ::1] boxes, const Py_ssize_t[::1] batch_index,
             const Py_ssize_t[::1] roi_order, const Py_ssize_t[::1] image_first,
             double spatial_scale, Py_ssize_t pooled_height, Py_ssize_t pooled_width,
             Py_ssize_t sampling_ratio, floating[:, :, :, ::1] grad_input, bint packed,
             Py_ssize_t block, Py_ssize_t[::1] paused, Py_ssize_t first_item, int n_threads):
    """Gradient of ps_roi_align w.r.t. the features, accumulated into zeroed `grad_input`,
    one time slice of it (returns as forward does).

    Work items are (image, block of `block` input channels), RoIs grouped by image through
    roi_order/image_first: no two threads write the same element, no atomics.
    """
    cdef Geometry g = ps_geometry(grad_input.shape, channels_last, pooled_height,
                                  pooled_width, sampling_ratio)
    return run(grad_output, boxes, batch_index, roi_order, image_first, spatial_scale,
               &grad_input[0, 0, 0, 0], g, True, True, block, paused, first_item, n_threads)


KERNELS = {"forward": forward, "backward": backward}
