# Compiled kernels of roialign_cy. Private: the wrappers in _api.py validate every argument
# and hand over canonical arrays (C-contiguous in their layout, native byte order, boxes in
# the features' dtype, batch indices checked), so nothing here re-checks them.

from cython.parallel cimport parallel, prange
from libc.stdlib cimport free, malloc
from libc.string cimport memset

from roialign_cy._bilinear cimport (
    RoIGrid,
    SampleTable,
    build_axis_tables,
    build_sample_table,
    floating,
    four_taps,
    sample_taps,
    table_delete,
    table_new,
)
from roialign_cy._blocks cimport (
    BlockItem,
    block_item,
    pack_block,
    pack_roi,
    share_item,
    unpack_block,
    unpack_roi,
)
from roialign_cy._cpu cimport roialign_cpu_has_avx2
from roialign_cy._geometry cimport Geometry, make_geometry
from roialign_cy._openmp cimport ROIALIGN_HAVE_OPENMP, omp_get_max_threads

OPENMP_ENABLED = bool(ROIALIGN_HAVE_OPENMP)


def openmp_max_threads():
    """omp_get_max_threads(): the team size a parallel region gets by default (1 if serial)."""
    return omp_get_max_threads()


def cpu_has_avx2():
    """Whether this CPU, and the OS, can run the AVX2 build of the kernels."""
    return roialign_cpu_has_avx2()


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
                if last - first < samples_per_bin and acc < 0:  # a skipped sample is a 0 that takes part
                    acc = 0
        else:
            acc = 0
            for s in range(first, last):
                acc = acc + four_taps(plane, &offsets[4 * s], &weights[4 * s])
            acc = acc / count
        out_plane[b * bin_stride] = acc


cdef inline void pool_channels_last(const floating* image, floating* out_roi,
                                    Py_ssize_t channels, const SampleTable* table,
                                    Py_ssize_t pooled_h, Py_ssize_t pooled_w,
                                    floating count, bint max_mode,
                                    double samples_per_bin) noexcept nogil:
    """Pool every bin of one RoI over contiguous channels (channels-last layout).

    Walks the RoI's axis tables (build_axis_tables) bins -> samples -> channels, forming
    each sample's taps on the way: no per-sample table to build. The innermost loop is
    contiguous and vectorizes; each channel still sums its samples in torchvision's order.
    """
    cdef Py_ssize_t ph, pw, iy, ix, c, n_inside
    cdef Py_ssize_t offsets[4]
    cdef floating weights[4]
    cdef const floating* p1
    cdef const floating* p2
    cdef const floating* p3
    cdef const floating* p4
    cdef floating w1, w2, w3, w4, value
    cdef floating* row
    cdef bint first
    for ph in range(pooled_h):
        for pw in range(pooled_w):
            row = out_roi + (ph * pooled_w + pw) * channels
            for c in range(channels):
                row[c] = 0
            first = True
            for iy in range(table.y_first[ph], table.y_first[ph + 1]):
                for ix in range(table.x_first[pw], table.x_first[pw + 1]):
                    sample_taps(&table.y_samples[iy], &table.x_samples[ix], max_mode,
                                offsets, weights)
                    p1 = image + offsets[0]
                    p2 = image + offsets[1]
                    p3 = image + offsets[2]
                    p4 = image + offsets[3]
                    w1, w2, w3, w4 = weights[0], weights[1], weights[2], weights[3]
                    if not max_mode:
                        for c in range(channels):
                            row[c] = row[c] + (w1 * p1[c] + w2 * p2[c] + w3 * p3[c] + w4 * p4[c])
                    elif first:
                        for c in range(channels):
                            row[c] = w1 * p1[c] + w2 * p2[c] + w3 * p3[c] + w4 * p4[c]
                    else:
                        for c in range(channels):
                            value = w1 * p1[c] + w2 * p2[c] + w3 * p3[c] + w4 * p4[c]
                            row[c] = value if beats(value, row[c]) else row[c]
                    first = False
            if not max_mode:
                for c in range(channels):
                    row[c] = row[c] / count
                continue
            n_inside = ((table.y_first[ph + 1] - table.y_first[ph])
                        * (table.x_first[pw + 1] - table.x_first[pw]))
            if n_inside < samples_per_bin:  # a skipped sample is a 0 that takes part
                for c in range(channels):
                    if row[c] < 0:
                        row[c] = 0


cdef inline bint pool_roi(const floating* image, const floating* box, floating spatial_scale,
                          floating* out_roi, const Geometry* g, SampleTable* table,
                          bint max_mode) noexcept nogil:
    """Pool every channel of one RoI. False when out of memory."""
    cdef RoIGrid grid
    cdef Py_ssize_t c
    if g.channels_last:
        if not build_axis_tables(table, box, spatial_scale, g.aligned, g.pooled_h, g.pooled_w,
                                 g.sampling_ratio, g.height, g.width, g.row_stride,
                                 g.col_stride, &grid):
            return False
        pool_channels_last(image, out_roi, g.channels, table, g.pooled_h, g.pooled_w,
                           <floating>grid.count, max_mode, grid.grid_h * grid.grid_w)
        return True
    # Channels-first: one table of every sample's taps, read once per channel plane.
    if not build_sample_table(table, box, spatial_scale, g.aligned, g.pooled_h, g.pooled_w,
                              g.sampling_ratio, g.height, g.width, g.row_stride,
                              g.col_stride, max_mode, &grid):
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
    if not build_axis_tables(table, box, spatial_scale, g.aligned, g.pooled_h, g.pooled_w,
                             g.sampling_ratio, g.height, g.width, g.width * block, block,
                             &grid):
        return False
    pool_channels_last(packed, pooled, block, table, g.pooled_h, g.pooled_w,
                       <floating>grid.count, max_mode, grid.grid_h * grid.grid_w)
    return True


def roi_align_forward(const floating[:, :, :, ::1] features, bint channels_last,
                      const Py_ssize_t[::1] batch_index, const floating[:, ::1] boxes,
                      double spatial_scale, Py_ssize_t pooled_height, Py_ssize_t pooled_width,
                      Py_ssize_t sampling_ratio, bint aligned, bint max_mode,
                      floating[:, :, :, ::1] out, int n_threads):
    """RoIAlign forward into `out`, one RoI per loop iteration, RoIs spread over threads.

    features is (N, C, H, W), or (N, H, W, C) when channels_last; out is (K, C, PH, PW) or
    (K, PH, PW, C). Returns False when a sample table could not be allocated.
    """
    cdef Geometry g = make_geometry(features.shape, channels_last, pooled_height,
                                    pooled_width, sampling_ratio, aligned)
    cdef Py_ssize_t k
    cdef SampleTable* table = NULL
    cdef int failed = 0
    cdef int* failed_flag = &failed  # written through a pointer: shared, not lastprivate
    cdef floating scale = <floating>spatial_scale
    cdef const floating* image = &features[0, 0, 0, 0]
    cdef floating* pooled = &out[0, 0, 0, 0]

    with nogil, parallel(num_threads=n_threads, use_threads_if=n_threads > 1):
        table = table_new(pooled_height, pooled_width)
        if table == NULL:
            failed_flag[0] = 1
        for k in prange(boxes.shape[0], schedule='dynamic'):
            if failed_flag[0]:
                continue
            if not pool_roi(image + batch_index[k] * g.image_stride, &boxes[k, 0], scale,
                            pooled + k * g.out_roi_stride, &g, table, max_mode):
                failed_flag[0] = 1
        table_delete(table)
    return not failed


def roi_align_forward_blocked(const floating[:, :, :, ::1] features, bint channels_last,
                              const floating[:, ::1] boxes, const Py_ssize_t[::1] roi_order,
                              const Py_ssize_t[::1] image_first, double spatial_scale,
                              Py_ssize_t pooled_height, Py_ssize_t pooled_width,
                              Py_ssize_t sampling_ratio, bint aligned, bint max_mode,
                              floating[:, :, :, ::1] out, Py_ssize_t block, int n_threads):
    """RoIAlign forward for many RoIs per image: work items are (image, channel block).

    Each item packs `block` channels of its image into a cache-resident buffer and pools all
    the image's RoIs from it (see _blocks.pxd). Same numbers as roi_align_forward, bit for
    bit: each output element still sums its samples in torchvision's order.
    """
    cdef Geometry g = make_geometry(features.shape, channels_last, pooled_height,
                                    pooled_width, sampling_ratio, aligned)
    cdef Py_ssize_t n_images = features.shape[0]
    cdef Py_ssize_t n_blocks = (g.channels + block - 1) // block
    cdef Py_ssize_t item, b, c0, n_channels, j, k
    cdef BlockItem it
    cdef SampleTable* table = NULL
    cdef floating* packed = NULL
    cdef floating* pooled = NULL
    cdef int failed = 0
    cdef int* failed_flag = &failed
    cdef floating scale = <floating>spatial_scale
    cdef const floating* image = &features[0, 0, 0, 0]
    cdef floating* out_base = &out[0, 0, 0, 0]

    with nogil, parallel(num_threads=n_threads, use_threads_if=n_threads > 1):
        table = table_new(pooled_height, pooled_width)
        if table == NULL:
            failed_flag[0] = 1
        packed = <floating*>malloc(g.height * g.width * block * sizeof(floating))
        pooled = <floating*>malloc(pooled_height * pooled_width * block * sizeof(floating))
        if packed == NULL or pooled == NULL:
            failed_flag[0] = 1
        for item in prange(n_images * n_blocks, schedule='dynamic'):
            it = block_item(item, g.channels, block)
            b, c0, n_channels = it.image, it.first_channel, it.n_channels
            if failed_flag[0] or image_first[b] == image_first[b + 1]:
                continue
            pack_block(image + b * g.image_stride, &g, c0, n_channels, packed, block)
            for j in range(image_first[b], image_first[b + 1]):
                k = roi_order[j]
                if not pool_packed_roi(packed, &boxes[k, 0], scale, &g, table, pooled,
                                       max_mode, block):
                    failed_flag[0] = 1
                    break
                unpack_roi(pooled, out_base + k * g.out_roi_stride, &g, c0, n_channels, block)
        table_delete(table)
        free(packed)
        free(pooled)
    return not failed


cdef inline Py_ssize_t argmax_sample(const floating* plane, const SampleTable* table,
                                     Py_ssize_t first, Py_ssize_t last,
                                     double samples_per_bin) noexcept nogil:
    """The sample whose value is the bin's max (forward's order), -1 when a skipped 0 wins."""
    cdef const Py_ssize_t* offsets = table.corner_offsets
    cdef const floating* weights = <const floating*>table.corner_weights
    cdef Py_ssize_t s, best = -1
    cdef floating value, best_value = 0
    for s in range(first, last):
        value = four_taps(plane, &offsets[4 * s], &weights[4 * s])
        if best < 0 or beats(value, best_value):
            best, best_value = s, value
    if best >= 0 and last - first < samples_per_bin and best_value < 0:
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
            s = argmax_sample(plane, table, first, last, samples_per_bin)
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


cdef inline bint unpool_roi(floating* grad_image, const floating* grad_roi,
                            const floating* image, const floating* box, floating spatial_scale,
                            const Geometry* g, SampleTable* table, bint max_mode,
                            Py_ssize_t c0, Py_ssize_t c1) noexcept nogil:
    """Backward of pool_roi for channels [c0, c1). False when out of memory."""
    cdef RoIGrid grid
    cdef Py_ssize_t c
    if g.channels_last and not max_mode:
        if not build_axis_tables(table, box, spatial_scale, g.aligned, g.pooled_h, g.pooled_w,
                                 g.sampling_ratio, g.height, g.width, g.row_stride,
                                 g.col_stride, &grid):
            return False
        unpool_channels_last(grad_image, grad_roi, g.channels, c0, c1, table, g.pooled_h,
                             g.pooled_w, <floating>grid.count)
        return True
    # Channels-first, and max mode in either layout: one channel at a time.
    if not build_sample_table(table, box, spatial_scale, g.aligned, g.pooled_h, g.pooled_w,
                              g.sampling_ratio, g.height, g.width, g.row_stride,
                              g.col_stride, max_mode, &grid):
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
    if not build_axis_tables(table, box, spatial_scale, g.aligned, g.pooled_h, g.pooled_w,
                             g.sampling_ratio, g.height, g.width, g.width * block, block,
                             &grid):
        return False
    pack_roi(grad_roi, roi_grad, g, c0, n_channels, block)
    unpool_channels_last(packed, roi_grad, block, 0, block, table, g.pooled_h, g.pooled_w,
                         <floating>grid.count)
    return True


def roi_align_backward(const floating[:, :, :, ::1] grad_output, bint channels_last,
                       const floating[:, ::1] boxes,
                       const Py_ssize_t[::1] roi_order, const Py_ssize_t[::1] image_first,
                       double spatial_scale, Py_ssize_t pooled_height, Py_ssize_t pooled_width,
                       Py_ssize_t sampling_ratio, bint aligned, bint max_mode,
                       const floating[:, :, :, ::1] features,
                       floating[:, :, :, ::1] grad_input, Py_ssize_t channel_blocks,
                       int n_threads):
    """Gradient of roi_align w.r.t. the features, accumulated into zeroed `grad_input`.

    Deterministic in parallel: a work item is (image, block of channels), so no two threads
    ever write the same element, and each element sums its contributions in torchvision's
    order (RoIs ascending, then bins, samples, taps) whatever the thread count.
    roi_order lists the RoIs grouped by image (stable), image_first[b] where image b starts.
    `features` is only read in max mode (to find each bin's arg-max sample).
    """
    cdef Geometry g = make_geometry(grad_input.shape, channels_last, pooled_height,
                                    pooled_width, sampling_ratio, aligned)
    cdef Py_ssize_t n_images = grad_input.shape[0]
    cdef Py_ssize_t item, b, j, k, c0, c1
    cdef BlockItem it
    cdef SampleTable* table = NULL
    cdef int failed = 0
    cdef int* failed_flag = &failed
    cdef floating scale = <floating>spatial_scale
    cdef const floating* image = &features[0, 0, 0, 0] if max_mode else NULL
    cdef floating* grad_base = &grad_input[0, 0, 0, 0]
    cdef const floating* grad_out = &grad_output[0, 0, 0, 0]

    with nogil, parallel(num_threads=n_threads, use_threads_if=n_threads > 1):
        table = table_new(pooled_height, pooled_width)
        if table == NULL:
            failed_flag[0] = 1
        for item in prange(n_images * channel_blocks, schedule='dynamic'):
            if failed_flag[0]:
                continue
            it = share_item(item, g.channels, channel_blocks)
            b, c0, c1 = it.image, it.first_channel, it.first_channel + it.n_channels
            for j in range(image_first[b], image_first[b + 1]):
                k = roi_order[j]
                if not unpool_roi(grad_base + b * g.image_stride, grad_out + k * g.out_roi_stride,
                                  image + b * g.image_stride if max_mode else NULL,
                                  &boxes[k, 0], scale, &g, table, max_mode, c0, c1):
                    failed_flag[0] = 1
                    break
        table_delete(table)
    return not failed


def roi_align_backward_blocked(const floating[:, :, :, ::1] grad_output, bint channels_last,
                               const floating[:, ::1] boxes, const Py_ssize_t[::1] roi_order,
                               const Py_ssize_t[::1] image_first, double spatial_scale,
                               Py_ssize_t pooled_height, Py_ssize_t pooled_width,
                               Py_ssize_t sampling_ratio, bint aligned,
                               floating[:, :, :, ::1] grad_input, Py_ssize_t block,
                               int n_threads):
    """Average-mode backward for many RoIs per image: work items are (image, channel block).

    The mirror of roi_align_forward_blocked: each item accumulates the gradients of all the
    image's RoIs into a cache-resident packed block, then writes the block out once. Items
    own disjoint elements, and each element still sums in torchvision's order: deterministic
    and bit-identical to roi_align_backward.
    """
    cdef Geometry g = make_geometry(grad_input.shape, channels_last, pooled_height,
                                    pooled_width, sampling_ratio, aligned)
    cdef Py_ssize_t n_images = grad_input.shape[0]
    cdef Py_ssize_t n_blocks = (g.channels + block - 1) // block
    cdef Py_ssize_t n_pixels = g.height * g.width
    cdef Py_ssize_t item, b, c0, n_channels, j, k
    cdef BlockItem it
    cdef SampleTable* table = NULL
    cdef floating* packed = NULL
    cdef floating* roi_grad = NULL
    cdef int failed = 0
    cdef int* failed_flag = &failed
    cdef floating scale = <floating>spatial_scale
    cdef const floating* grad_out = &grad_output[0, 0, 0, 0]
    cdef floating* grad_base = &grad_input[0, 0, 0, 0]

    with nogil, parallel(num_threads=n_threads, use_threads_if=n_threads > 1):
        table = table_new(pooled_height, pooled_width)
        if table == NULL:
            failed_flag[0] = 1
        packed = <floating*>malloc(n_pixels * block * sizeof(floating))
        roi_grad = <floating*>malloc(pooled_height * pooled_width * block * sizeof(floating))
        if packed == NULL or roi_grad == NULL:
            failed_flag[0] = 1
        for item in prange(n_images * n_blocks, schedule='dynamic'):
            it = block_item(item, g.channels, block)
            b, c0, n_channels = it.image, it.first_channel, it.n_channels
            if failed_flag[0] or image_first[b] == image_first[b + 1]:
                continue  # an image without RoIs keeps its zero gradient
            memset(packed, 0, n_pixels * block * sizeof(floating))
            for j in range(image_first[b], image_first[b + 1]):
                k = roi_order[j]
                if not unpool_packed_roi(packed, grad_out + k * g.out_roi_stride, roi_grad,
                                         &boxes[k, 0], scale, &g, table, c0, n_channels,
                                         block):
                    failed_flag[0] = 1
                    break
            unpack_block(packed, grad_base + b * g.image_stride, &g, c0, n_channels, block)
        table_delete(table)
        free(packed)
        free(roi_grad)
    return not failed
