# The per-RoI RoIAlign pooling code (forward and backward, one RoI on one map), shared by the
# kernels that pool RoIs from one map (_roi_align_kernels) and from a pyramid of maps
# (_multiscale_roi_align_kernels): both run this very code, so their numbers agree bit for bit.
# Private: callers hand over canonical arrays and checked indices (see _roi_align_kernels).

from roialign_cy._channel_blocks cimport pack_roi
from roialign_cy._channel_gather cimport GATHER_SAMPLES, gather
from roialign_cy._kernel_call cimport Geometry
from roialign_cy._sample_table cimport (
    RoIGrid,
    SampleTable,
    build_axis_tables,
    build_sample_table,
    fits_sample_table,
    floating,
    four_taps,
    inside_samples,
    sample_taps,
)


cdef inline bint beats(floating value, floating best) noexcept nogil:
    """Max-mode order: larger wins, ties keep the first, the first NaN wins and stays."""
    return value > best or (value != value and best == best)


cdef inline void pool_plane(const floating* plane, floating* out_plane, Py_ssize_t bin_stride,
                            const SampleTable* table, floating count, bint max_mode,
                            double samples_per_bin) noexcept nogil:
    """Pool every bin of one RoI from one channel plane (channels-first layout)."""
    cdef Py_ssize_t b, s, first, last
    cdef const Py_ssize_t* offsets = table.corner_offsets
    cdef const floating* weights = <const floating*>table.corner_weights
    cdef floating acc, value
    for b in range(table.n_bins):
        first = table.bin_first[b]
        last = table.bin_first[b + 1]
        if max_mode:
            if first == last:
                acc = 0
            else:
                acc = four_taps(plane, &offsets[4 * first], &weights[4 * first])
                for s in range(first + 1, last):
                    value = four_taps(plane, &offsets[4 * s], &weights[4 * s])
                    if beats(value, acc):
                        acc = value
                if inside_samples(table, b) < samples_per_bin and acc < 0:  # a skipped 0 takes part
                    acc = 0
        else:
            acc = 0
            for s in range(first, last):
                acc = acc + four_taps(plane, &offsets[4 * s], &weights[4 * s])
            acc = acc / count
        out_plane[b * bin_stride] = acc


cdef inline void max_channels_last(const floating* image, floating* row, Py_ssize_t channels,
                                   const SampleTable* table, Py_ssize_t ph, Py_ssize_t pw,
                                   Py_ssize_t pooled_w, double samples_per_bin) noexcept nogil:
    """Max mode of pool_channels_last for bin (ph, pw): the first largest sample wins."""
    cdef Py_ssize_t iy, ix, c
    cdef Py_ssize_t offsets[4]
    cdef floating weights[4]
    cdef const floating* p1
    cdef const floating* p2
    cdef const floating* p3
    cdef const floating* p4
    cdef floating w1, w2, w3, w4, value
    cdef bint first = True
    for iy in range(table.y_first[ph], table.y_first[ph + 1]):
        for ix in range(table.x_first[pw], table.x_first[pw + 1]):
            sample_taps(&table.y_samples[iy], &table.x_samples[ix], True, offsets, weights)
            p1 = image + offsets[0]
            p2 = image + offsets[1]
            p3 = image + offsets[2]
            p4 = image + offsets[3]
            w1, w2, w3, w4 = weights[0], weights[1], weights[2], weights[3]
            if first:
                for c in range(channels):
                    row[c] = w1 * p1[c] + w2 * p2[c] + w3 * p3[c] + w4 * p4[c]
            else:
                for c in range(channels):
                    value = w1 * p1[c] + w2 * p2[c] + w3 * p3[c] + w4 * p4[c]
                    row[c] = value if beats(value, row[c]) else row[c]
            first = False
    if first:  # no sample: the bin is 0
        for c in range(channels):
            row[c] = 0
    elif inside_samples(table, ph * pooled_w + pw) < samples_per_bin:  # a skipped 0 takes part
        for c in range(channels):
            if row[c] < 0:
                row[c] = 0


cdef inline void pool_channels_last(const floating* image, floating* out_roi,
                                    Py_ssize_t channels, const SampleTable* table,
                                    Py_ssize_t pooled_h, Py_ssize_t pooled_w,
                                    floating count, bint max_mode,
                                    double samples_per_bin) noexcept nogil:
    """Pool every bin of one RoI over contiguous channels (channels-last layout).

    Walks the RoI's axis tables (build_axis_tables) bins -> samples -> channels, forming
    each sample's taps on the way: no per-sample table to build. Average mode forms the
    taps of up to GATHER_SAMPLES samples, then runs the register-blocked gather over all
    channels; each channel still sums its samples in torchvision's order.
    """
    cdef Py_ssize_t ph, pw, iy, ix, c, n
    cdef Py_ssize_t offsets[4 * GATHER_SAMPLES]
    cdef floating weights[4 * GATHER_SAMPLES]
    cdef floating* row
    for ph in range(pooled_h):
        for pw in range(pooled_w):
            row = out_roi + (ph * pooled_w + pw) * channels
            if max_mode:
                max_channels_last(image, row, channels, table, ph, pw, pooled_w,
                                  samples_per_bin)
                continue
            for c in range(channels):
                row[c] = 0
            n = 0
            for iy in range(table.y_first[ph], table.y_first[ph + 1]):
                for ix in range(table.x_first[pw], table.x_first[pw + 1]):
                    sample_taps(&table.y_samples[iy], &table.x_samples[ix], False,
                                &offsets[4 * n], &weights[4 * n])
                    n = n + 1
                    if n == GATHER_SAMPLES:
                        gather(image, offsets, weights, n, channels, row)
                        n = 0
            if n > 0:
                gather(image, offsets, weights, n, channels, row)
            for c in range(channels):
                row[c] = row[c] / count


cdef inline bint roi_axes(SampleTable* table, const floating* box, floating spatial_scale,
                          const Geometry* g, Py_ssize_t row_stride, Py_ssize_t col_stride,
                          bint for_max, RoIGrid* grid) noexcept nogil:
    """build_axis_tables for one RoI of this call, on a map with these strides (the
    features', or a packed block's)."""
    return build_axis_tables(table, box, spatial_scale, g.aligned, g.pooled_h, g.pooled_w,
                             g.sampling_ratio, g.height, g.width, row_stride, col_stride,
                             for_max, grid)


cdef inline bint pool_roi(const floating* image, const floating* box, floating spatial_scale,
                          floating* out_roi, const Geometry* g, SampleTable* table,
                          bint max_mode) noexcept nogil:
    """Pool every channel of one RoI. False when out of memory."""
    cdef RoIGrid grid
    cdef Py_ssize_t c
    if not roi_axes(table, box, spatial_scale, g, g.row_stride, g.col_stride, max_mode, &grid):
        return False
    if g.channels_last:
        pool_channels_last(image, out_roi, g.channels, table, g.pooled_h, g.pooled_w,
                           <floating>grid.count, max_mode, grid.grid_h * grid.grid_w)
        return True
    if not fits_sample_table(table, g.pooled_h, g.pooled_w):
        # Channels-first, many samples: each plane as a one-channel channels-last map.
        for c in range(g.channels):
            pool_channels_last(image + c * g.channel_stride, out_roi + c * g.out_channel_stride,
                               1, table, g.pooled_h, g.pooled_w, <floating>grid.count,
                               max_mode, grid.grid_h * grid.grid_w)
        return True
    # Channels-first: one table of every sample's taps, read once per channel plane.
    if not build_sample_table(table, g.pooled_h, g.pooled_w, max_mode, image):
        return False
    for c in range(g.channels):
        pool_plane(image + c * g.channel_stride, out_roi + c * g.out_channel_stride,
                   g.out_bin_stride, table, <floating>grid.count, max_mode,
                   grid.grid_h * grid.grid_w)
    return True


cdef inline bint pool_packed_roi(const floating* packed, const floating* box,
                                 floating spatial_scale, const Geometry* g,
                                 SampleTable* table, floating* pooled, bint max_mode,
                                 Py_ssize_t block) noexcept nogil:
    """Pool one RoI from a packed channel block into pooled (n_bins, block)."""
    cdef RoIGrid grid
    if not roi_axes(table, box, spatial_scale, g, g.width * block, block, max_mode, &grid):
        return False
    pool_channels_last(packed, pooled, block, table, g.pooled_h, g.pooled_w,
                       <floating>grid.count, max_mode, grid.grid_h * grid.grid_w)
    return True


cdef inline Py_ssize_t argmax_sample(const floating* plane, const SampleTable* table,
                                     Py_ssize_t b, double samples_per_bin) noexcept nogil:
    """The sample of bin b whose value is the bin's max (forward's order), -1 when a skipped
    0 wins."""
    cdef const Py_ssize_t* offsets = table.corner_offsets
    cdef const floating* weights = <const floating*>table.corner_weights
    cdef Py_ssize_t s, best = -1
    cdef floating value, best_value = 0
    for s in range(table.bin_first[b], table.bin_first[b + 1]):
        value = four_taps(plane, &offsets[4 * s], &weights[4 * s])
        if best < 0 or beats(value, best_value):
            best, best_value = s, value
    if best >= 0 and inside_samples(table, b) < samples_per_bin and best_value < 0:
        return -1
    return best


cdef inline void scatter_sample(floating* grad_plane, const SampleTable* table, Py_ssize_t s,
                                floating grad, floating count) noexcept nogil:
    """Add sample s's share of `grad` to its 4 taps: torchvision's grad * w_i / count."""
    cdef const Py_ssize_t* offsets = &table.corner_offsets[4 * s]
    cdef const floating* weights = &(<const floating*>table.corner_weights)[4 * s]
    grad_plane[offsets[0]] += grad * weights[0] / count
    grad_plane[offsets[1]] += grad * weights[1] / count
    grad_plane[offsets[2]] += grad * weights[2] / count
    grad_plane[offsets[3]] += grad * weights[3] / count


cdef inline void unpool_plane(floating* grad_plane, const floating* grad_bins,
                              Py_ssize_t bin_stride, const floating* plane,
                              const SampleTable* table, floating count, bint max_mode,
                              double samples_per_bin) noexcept nogil:
    """Backward of pool_plane: spread every bin's gradient over one channel plane."""
    cdef Py_ssize_t b, s, first, last
    cdef floating grad
    for b in range(table.n_bins):
        grad = grad_bins[b * bin_stride]
        first = table.bin_first[b]
        last = table.bin_first[b + 1]
        if max_mode:
            s = argmax_sample(plane, table, b, samples_per_bin)
            if s >= 0:
                scatter_sample(grad_plane, table, s, grad, <floating>1)
        else:
            for s in range(first, last):
                scatter_sample(grad_plane, table, s, grad, count)


cdef inline void unpool_channels_last(floating* grad_image, const floating* grad_roi,
                                      Py_ssize_t channels, Py_ssize_t c0, Py_ssize_t c1,
                                      const SampleTable* table, Py_ssize_t pooled_h,
                                      Py_ssize_t pooled_w, floating count) noexcept nogil:
    """Backward of pool_channels_last (avg) for channels [c0, c1): contiguous, vectorizes."""
    cdef Py_ssize_t ph, pw, iy, ix, c
    cdef Py_ssize_t offsets[4]
    cdef floating weights[4]
    cdef floating* g1
    cdef floating* g2
    cdef floating* g3
    cdef floating* g4
    cdef const floating* grad_row
    cdef floating w1, w2, w3, w4
    for ph in range(pooled_h):
        for pw in range(pooled_w):
            grad_row = grad_roi + (ph * pooled_w + pw) * channels
            for iy in range(table.y_first[ph], table.y_first[ph + 1]):
                for ix in range(table.x_first[pw], table.x_first[pw + 1]):
                    sample_taps(&table.y_samples[iy], &table.x_samples[ix], False, offsets,
                                weights)
                    g1 = grad_image + offsets[0]
                    g2 = grad_image + offsets[1]
                    g3 = grad_image + offsets[2]
                    g4 = grad_image + offsets[3]
                    w1, w2, w3, w4 = weights[0], weights[1], weights[2], weights[3]
                    # One tap at a time: two taps of a sample may be the same element (borders).
                    for c in range(c0, c1):
                        g1[c] += grad_row[c] * w1 / count
                    for c in range(c0, c1):
                        g2[c] += grad_row[c] * w2 / count
                    for c in range(c0, c1):
                        g3[c] += grad_row[c] * w3 / count
                    for c in range(c0, c1):
                        g4[c] += grad_row[c] * w4 / count


cdef inline void unpool_max_axes(floating* grad_plane, const floating* grad_bins,
                                 Py_ssize_t bin_stride, const floating* plane,
                                 const SampleTable* table, Py_ssize_t pooled_h,
                                 Py_ssize_t pooled_w, double samples_per_bin) noexcept nogil:
    """Max-mode backward of one channel plane without a per-sample table: each bin's
    gradient to the 4 taps of its first maximum (argmax_sample's rules), from the axis
    tables. `plane` and `grad_plane` may be channels-last (the taps carry the strides)."""
    cdef Py_ssize_t ph, pw, iy, ix, i
    cdef Py_ssize_t offsets[4]
    cdef Py_ssize_t best_offsets[4]
    cdef floating weights[4]
    cdef floating best_weights[4]
    cdef floating value, best_value, grad
    cdef bint found
    for ph in range(pooled_h):
        for pw in range(pooled_w):
            found = False
            best_value = 0
            for iy in range(table.y_first[ph], table.y_first[ph + 1]):
                for ix in range(table.x_first[pw], table.x_first[pw + 1]):
                    sample_taps(&table.y_samples[iy], &table.x_samples[ix], True, offsets,
                                weights)
                    value = four_taps(plane, offsets, weights)
                    if not found or beats(value, best_value):
                        found, best_value = True, value
                        for i in range(4):
                            best_offsets[i], best_weights[i] = offsets[i], weights[i]
            if not found or (inside_samples(table, ph * pooled_w + pw) < samples_per_bin
                             and best_value < 0):
                continue  # no sample inside, or a skipped 0 is the maximum
            grad = grad_bins[(ph * pooled_w + pw) * bin_stride]
            for i in range(4):
                grad_plane[best_offsets[i]] += grad * best_weights[i]


cdef inline bint unpool_roi(floating* grad_image, const floating* grad_roi,
                            const floating* image, const floating* box, floating spatial_scale,
                            const Geometry* g, SampleTable* table, bint max_mode,
                            Py_ssize_t c0, Py_ssize_t c1) noexcept nogil:
    """Backward of pool_roi for channels [c0, c1). False when out of memory."""
    cdef RoIGrid grid
    cdef Py_ssize_t c
    if not roi_axes(table, box, spatial_scale, g, g.row_stride, g.col_stride, max_mode, &grid):
        return False
    if g.channels_last and not max_mode:
        unpool_channels_last(grad_image, grad_roi, g.channels, c0, c1, table, g.pooled_h,
                             g.pooled_w, <floating>grid.count)
        return True
    if not fits_sample_table(table, g.pooled_h, g.pooled_w):
        # Many samples: one channel at a time, its taps formed from the axis tables.
        for c in range(c0, c1):
            if max_mode:
                unpool_max_axes(grad_image + c * g.channel_stride,
                                grad_roi + c * g.out_channel_stride, g.out_bin_stride,
                                image + c * g.channel_stride, table, g.pooled_h, g.pooled_w,
                                grid.grid_h * grid.grid_w)
            else:  # channels-first: each plane as a one-channel channels-last map
                unpool_channels_last(grad_image + c * g.channel_stride,
                                     grad_roi + c * g.out_channel_stride, 1, 0, 1, table,
                                     g.pooled_h, g.pooled_w, <floating>grid.count)
        return True
    # Channels-first, and max mode in either layout: one channel at a time.
    if not build_sample_table(table, g.pooled_h, g.pooled_w, max_mode, grad_image):
        return False
    for c in range(c0, c1):
        unpool_plane(grad_image + c * g.channel_stride, grad_roi + c * g.out_channel_stride,
                     g.out_bin_stride, image + c * g.channel_stride if max_mode else NULL,
                     table, <floating>grid.count, max_mode, grid.grid_h * grid.grid_w)
    return True


cdef inline bint unpool_packed_roi(floating* packed, const floating* grad_roi, floating* roi_grad,
                                   const floating* box, floating spatial_scale,
                                   const Geometry* g, SampleTable* table, Py_ssize_t c0,
                                   Py_ssize_t n_channels, Py_ssize_t block) noexcept nogil:
    """Add one RoI's average-mode gradient for channels [c0, c0 + n) to a packed block."""
    cdef RoIGrid grid
    if not roi_axes(table, box, spatial_scale, g, g.width * block, block, False, &grid):
        return False
    pack_roi(grad_roi, roi_grad, g, c0, n_channels, block)
    unpool_channels_last(packed, roi_grad, block, 0, block, table, g.pooled_h, g.pooled_w,
                         <floating>grid.count)
    return True
