# The Precise RoI Pooling kernels (prroi_pool, prroi_pool_backward; IoU-Net, Jiang et al.
# 2018), with mmcv's definition: box corners x1 * spatial_scale etc. (no offset), the RoI's
# size max(x2 - x1, 0) split into PH x PW equal bins, and each bin the exact integral of the
# map's bilinear interpolant over the bin divided by the bin's area (0 for a zero-area bin,
# so an inverted box pools to 0). Pixels lie at integer coordinates and pixels outside the
# map are 0, so the interpolant falls linearly to 0 between the border pixel and the next.
#
# The interpolant is a sum of tent functions v[i, j] * hat(y - i) * hat(x - j), so a bin's
# integral factorises: sum over pixels of v[i, j] * wy[i] * wx[j], where wy[i] is the
# integral of hat(y - i) over the bin's rows (and wx[j] over its columns). These "tent
# weights" are computed once per RoI and bin edge (in double), only for the pixels of the map
# that the bin touches: the work of a bin is bounded by the map, however large the box.
# Private: _prroi_pool.py hands over private, canonical arrays. Each entry point fills a
# KernelCall and runs its work items through _work_items.run_items.

from libc.math cimport ceil, floor, fmax, fmin, INFINITY

from roialign_cy._channel_blocks cimport BlockItem, block_item
from roialign_cy._channel_gather cimport tent_integrals
from roialign_cy._kernel_call cimport (
    Geometry,
    KernelCall,
    kernel_call,
    make_geometry,
    n_block_items,
    roi_of,
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


cdef struct TentTable:
    # One RoI's tent weights: bin ph's rows are y_first[ph] + [0, y_count[ph]), with weights
    # wy[ph * H + i] (i from 0); the same for the columns. bin_y1[ph], bin_y2[ph] etc. are
    # the bin's edges in feature coordinates; area the bins' common area.
    void* wy                       # floating (the call's T): a struct cannot hold a fused type
    void* wx
    Py_ssize_t* y_first
    Py_ssize_t* y_count
    Py_ssize_t* x_first
    Py_ssize_t* x_count
    double* bin_y1
    double* bin_y2
    double* bin_x1
    double* bin_x2
    double area


cdef inline TentTable table_in(void* weights, void* ranges, void* edges, const Geometry* g,
                               const floating* type_tag) noexcept nogil:
    """The tables laid out in scratch buffers of (PH * H + PW * W) floating,
    2 * (PH + PW) Py_ssize_t and 2 * (PH + PW) double."""
    cdef TentTable t
    t.wy = weights
    t.wx = <floating*>weights + g.pooled_h * g.height
    t.y_first = <Py_ssize_t*>ranges
    t.y_count = t.y_first + g.pooled_h
    t.x_first = t.y_count + g.pooled_h
    t.x_count = t.x_first + g.pooled_w
    t.bin_y1 = <double*>edges
    t.bin_y2 = t.bin_y1 + g.pooled_h
    t.bin_x1 = t.bin_y2 + g.pooled_h
    t.bin_x2 = t.bin_x1 + g.pooled_w
    return t


cdef inline double tent_cdf(double t) noexcept nogil:
    """The integral of hat(u) = max(0, 1 - |u|) over (-inf, t]."""
    if t <= -1.0:
        return 0.0
    if t <= 0.0:
        return 0.5 * (t + 1.0) * (t + 1.0)
    if t < 1.0:
        return 1.0 - 0.5 * (1.0 - t) * (1.0 - t)
    return 1.0


cdef inline void axis_tents(double start, double bin_size, Py_ssize_t n_bins, Py_ssize_t size,
                            floating* weights, Py_ssize_t* first, Py_ssize_t* count,
                            double* lo, double* hi) noexcept nogil:
    """Bin edges (mmcv's: lo = start + bin_size * p, hi = lo + bin_size) and tent weights
    along one axis. Pixel i's tent meets (lo, hi) iff floor(lo) <= i <= ceil(hi); only those
    within [0, size - 1] are kept (the rest are 0). Range tests are written so that NaN fails
    them before any cast to an integer."""
    cdef Py_ssize_t p, i, i0
    cdef double b1, b2, first_pixel, last_pixel
    for p in range(n_bins):
        b1 = start + bin_size * <double>p
        b2 = b1 + bin_size
        lo[p], hi[p] = b1, b2
        first_pixel = fmax(floor(b1), 0.0)
        last_pixel = fmin(ceil(b2), <double>(size - 1))
        if not (first_pixel <= last_pixel):
            first[p], count[p] = 0, 0
            continue
        i0 = <Py_ssize_t>first_pixel
        first[p], count[p] = i0, <Py_ssize_t>last_pixel - i0 + 1
        for i in range(count[p]):
            weights[p * size + i] = <floating>(tent_cdf(b2 - <double>(i0 + i))
                                               - tent_cdf(b1 - <double>(i0 + i)))


cdef inline bint roi_tents(TentTable* t, const floating* box, double spatial_scale,
                           const Geometry* g) noexcept nogil:
    """The tent tables of box = (x1, y1, x2, y2); False when its bins have no finite,
    positive area (an inverted or empty box, or one beyond the double range): they pool
    to 0 and send no gradient."""
    cdef floating* wy = <floating*>t.wy
    cdef floating* wx = <floating*>t.wx
    cdef double roi_x1 = <double>box[0] * spatial_scale
    cdef double roi_y1 = <double>box[1] * spatial_scale
    cdef double roi_x2 = <double>box[2] * spatial_scale
    cdef double roi_y2 = <double>box[3] * spatial_scale
    cdef double bin_w = fmax(roi_x2 - roi_x1, 0.0) / <double>g.pooled_w
    cdef double bin_h = fmax(roi_y2 - roi_y1, 0.0) / <double>g.pooled_h
    t.area = bin_w * bin_h
    if not (t.area > 0.0 and t.area < INFINITY and roi_x1 > -INFINITY and roi_y1 > -INFINITY
            and bin_w < INFINITY and bin_h < INFINITY):
        return False
    axis_tents(roi_y1, bin_h, g.pooled_h, g.height, wy, t.y_first, t.y_count,
               t.bin_y1, t.bin_y2)
    axis_tents(roi_x1, bin_w, g.pooled_w, g.width, wx, t.x_first, t.x_count,
               t.bin_x1, t.bin_x2)
    return True


cdef inline void column_sums(floating* columns, const floating* plane, const Geometry* g,
                             const floating* wy, Py_ssize_t y0, Py_ssize_t ny, Py_ssize_t x0,
                             Py_ssize_t x1) noexcept nogil:
    """columns[j] = sum_i wy[i] * v[y0 + i, j] for the columns j in [x0, x1) of one
    channels-first plane, rows in order: one contiguous multiply-add per column
    (vectorizable without reordering any sum), four rows per pass over the columns (the
    same additions in the same order, a quarter of the loads and stores of columns)."""
    cdef Py_ssize_t i = 0, j
    cdef floating w0, w1, w2, w3
    cdef const floating* r0
    cdef const floating* r1
    cdef const floating* r2
    cdef const floating* r3
    for j in range(x0, x1):
        columns[j] = 0
    while i + 4 <= ny:
        w0, w1, w2, w3 = wy[i], wy[i + 1], wy[i + 2], wy[i + 3]
        r0 = plane + (y0 + i) * g.row_stride
        r1 = r0 + g.row_stride
        r2 = r1 + g.row_stride
        r3 = r2 + g.row_stride
        for j in range(x0, x1):
            columns[j] = (((columns[j] + w0 * r0[j]) + w1 * r1[j]) + w2 * r2[j]) + w3 * r3[j]
        i += 4
    while i < ny:
        w0 = wy[i]
        r0 = plane + (y0 + i) * g.row_stride
        for j in range(x0, x1):
            columns[j] = columns[j] + w0 * r0[j]
        i += 1


cdef inline floating weighted_sum(const floating* values, const floating* w,
                                  Py_ssize_t n) noexcept nogil:
    """sum_j w[j] * values[j], in order."""
    cdef Py_ssize_t j
    cdef floating total = 0
    for j in range(n):
        total = total + w[j] * values[j]
    return total


cdef inline void column_span(const TentTable* t, const Geometry* g, Py_ssize_t* x0,
                             Py_ssize_t* x1) noexcept nogil:
    """[x0, x1): the columns any bin of the RoI touches (x0 = x1 when none)."""
    cdef Py_ssize_t pw
    x0[0], x1[0] = g.width, 0
    for pw in range(g.pooled_w):
        if t.x_count[pw] > 0:
            if t.x_first[pw] < x0[0]:
                x0[0] = t.x_first[pw]
            if t.x_first[pw] + t.x_count[pw] > x1[0]:
                x1[0] = t.x_first[pw] + t.x_count[pw]
    if x1[0] < x0[0]:
        x0[0] = x1[0] = 0


cdef inline floating bin_value(const floating* plane, const Geometry* g, const floating* wy,
                               Py_ssize_t y0, Py_ssize_t ny, const floating* wx, Py_ssize_t x0,
                               Py_ssize_t nx) noexcept nogil:
    """sum_j wx[j] * (sum_i wy[i] * v[y0 + i, x0 + j]) of one channel plane (any strides):
    the sums of column_sums then weighted_sum, in their order, so the same bits."""
    cdef Py_ssize_t i, j
    cdef floating column, total = 0
    cdef const floating* pixel
    for j in range(nx):
        column = 0
        pixel = plane + y0 * g.row_stride + (x0 + j) * g.col_stride
        for i in range(ny):
            column = column + wy[i] * pixel[i * g.row_stride]
        total = total + wx[j] * column
    return total


cdef inline void bin_integrals(floating* acc, const floating* image, const Geometry* g,
                               const floating* wy, Py_ssize_t y0, Py_ssize_t ny,
                               const floating* wx, Py_ssize_t x0, Py_ssize_t nx) noexcept nogil:
    """acc[c] = bin_value of every channel c of a channels-last image, channels innermost
    and register-blocked (tent_integrals: the same sums in the same order as bin_value, so
    both layouts give the same bits)."""
    tent_integrals(image + y0 * g.row_stride + x0 * g.col_stride, g.row_stride, g.col_stride,
                   wy, ny, wx, nx, g.channels, acc)


cdef bint forward_roi(const KernelCall* call, Scratch* scratch, Py_ssize_t item,
                      const floating* type_tag) noexcept nogil:
    """Forward of a channels-last map: every bin of every channel of the item's RoI k
    (channels innermost)."""
    cdef Py_ssize_t k = roi_of(call, item)
    cdef const Geometry* g = &call.g
    cdef TentTable t = table_in(scratch.buffers[0], scratch.buffers[1], scratch.buffers[2], g,
                                type_tag)
    cdef floating* acc = <floating*>scratch.buffers[3]
    cdef const floating* image = <const floating*>call.values + call.batch_index[k] * g.image_stride
    cdef floating* out_roi = <floating*>call.result + k * g.out_roi_stride
    cdef Py_ssize_t ph, pw, c, b
    cdef floating area
    if not roi_tents(&t, <const floating*>call.boxes + 4 * k, call.spatial_scale, g):
        for b in range(g.out_roi_stride):
            out_roi[b] = 0
        return True
    area = <floating>t.area
    for ph in range(g.pooled_h):
        for pw in range(g.pooled_w):
            b = ph * g.pooled_w + pw
            bin_integrals(acc, image, g, <const floating*>t.wy + ph * g.height, t.y_first[ph],
                          t.y_count[ph], <const floating*>t.wx + pw * g.width, t.x_first[pw],
                          t.x_count[pw])
            for c in range(g.channels):
                out_roi[b * g.out_bin_stride + c] = acc[c] / area
    return True


cdef bint forward_planes(const KernelCall* call, Scratch* scratch, Py_ssize_t item,
                         const floating* type_tag) noexcept nogil:
    """Forward of a channels-first map, work item (image, channel block): every bin of the
    block's channels of all the image's RoIs, RoI by RoI, plane by plane, so that the
    block's planes stay in the cache while all the image's RoIs read them. A bin row's
    column sums first (column_sums), then each bin's weighted sum of them."""
    cdef const Geometry* g = &call.g
    cdef BlockItem it = block_item(item, g.channels, call.block)
    cdef TentTable t = table_in(scratch.buffers[0], scratch.buffers[1], scratch.buffers[2], g,
                                type_tag)
    cdef floating* columns = <floating*>scratch.buffers[3]
    cdef const floating* image = <const floating*>call.values + it.image * g.image_stride
    cdef Py_ssize_t last = call.image_first[it.image + 1]
    cdef Py_ssize_t j, k, ph, pw, c, x0, x1
    cdef floating area
    cdef floating* out_plane
    for j in range(resume_from(scratch, call.image_first[it.image]), last):
        k = call.roi_order[j]
        out_plane = <floating*>call.result + k * g.out_roi_stride
        if not roi_tents(&t, <const floating*>call.boxes + 4 * k, call.spatial_scale, g):
            for c in range(it.first_channel * g.out_channel_stride,
                           (it.first_channel + it.n_channels) * g.out_channel_stride):
                out_plane[c] = 0
            continue
        area = <floating>t.area
        column_span(&t, g, &x0, &x1)
        for c in range(it.first_channel, it.first_channel + it.n_channels):
            for ph in range(g.pooled_h):
                column_sums(columns, image + c * g.channel_stride, g,
                            <const floating*>t.wy + ph * g.height, t.y_first[ph], t.y_count[ph],
                            x0, x1)
                for pw in range(g.pooled_w):
                    out_plane[c * g.out_channel_stride + ph * g.pooled_w + pw] = weighted_sum(
                        columns + t.x_first[pw], <const floating*>t.wx + pw * g.width,
                        t.x_count[pw]) / area
        if pause_at(scratch, j + 1, last):
            break
    return True


cdef inline void bin_spread(floating* plane, Py_ssize_t plane_step, Py_ssize_t n,
                            const floating* share, floating* row_share, const Geometry* g,
                            const floating* wy, Py_ssize_t y0, Py_ssize_t ny,
                            const floating* wx, Py_ssize_t x0, Py_ssize_t nx) noexcept nogil:
    """Backward of bin_value: (share[c] * wy[i]) * wx[j] added to pixel (y0 + i, x0 + j) of
    each of the n planes (plane + c * plane_step); row_share: scratch for n values. A
    channels-first plane (n = 1, unit column stride) takes one contiguous multiply-add per
    row."""
    cdef Py_ssize_t i, j, c, at
    cdef floating w
    cdef floating* row
    if not g.channels_last:
        for c in range(n):
            for i in range(ny):
                w = share[c] * wy[i]
                row = plane + c * plane_step + (y0 + i) * g.row_stride + x0
                for j in range(nx):
                    row[j] = row[j] + w * wx[j]
        return
    for i in range(ny):
        for c in range(n):
            row_share[c] = share[c] * wy[i]
        for j in range(nx):
            w = wx[j]
            at = (y0 + i) * g.row_stride + (x0 + j) * g.col_stride
            for c in range(n):
                plane[c * plane_step + at] += row_share[c] * w


cdef bint backward_share(const KernelCall* call, Scratch* scratch, Py_ssize_t item,
                         const floating* type_tag) noexcept nogil:
    """Feature gradient: one block of channels of one image, from all its RoIs (RoIs
    ascending, then bins): the same order for any thread count, no atomics."""
    cdef const Geometry* g = &call.g
    cdef BlockItem it = block_item(item, g.channels, call.block)
    cdef TentTable t = table_in(scratch.buffers[0], scratch.buffers[1], scratch.buffers[2], g,
                                type_tag)
    cdef floating* share = <floating*>scratch.buffers[3]
    cdef floating* grad_image = <floating*>call.result + it.image * g.image_stride
    cdef Py_ssize_t last = call.image_first[it.image + 1]
    cdef Py_ssize_t j, k, ph, pw, b, c
    cdef const floating* grad_roi
    cdef floating area
    for j in range(resume_from(scratch, call.image_first[it.image]), last):
        k = call.roi_order[j]
        if not roi_tents(&t, <const floating*>call.boxes + 4 * k, call.spatial_scale, g):
            continue  # a zero-area box sends no gradient
        area = <floating>t.area
        grad_roi = <const floating*>call.values + k * g.out_roi_stride
        for ph in range(g.pooled_h):
            for pw in range(g.pooled_w):
                b = ph * g.pooled_w + pw
                for c in range(it.n_channels):
                    share[c] = grad_roi[(it.first_channel + c) * g.out_channel_stride
                                        + b * g.out_bin_stride] / area
                bin_spread(grad_image + it.first_channel * g.channel_stride, g.channel_stride,
                           it.n_channels, share, share + g.channels, g,
                           <const floating*>t.wy + ph * g.height, t.y_first[ph], t.y_count[ph],
                           <const floating*>t.wx + pw * g.width, t.x_first[pw], t.x_count[pw])
        if pause_at(scratch, j + 1, last):
            break
    return True


cdef inline floating line_at(const floating* plane, const Geometry* g, double x, bint along_x,
                             const floating* w, Py_ssize_t first, Py_ssize_t n) noexcept nogil:
    """The integral of the interpolant along a bin edge: at column x over the bin's rows
    (along_x False: sum_i w[i] * f(first + i, x)), or at row x over its columns (along_x
    True: sum_j w[j] * f(x, first + j)); f is linear between the two pixels around x, and 0
    outside the map."""
    cdef Py_ssize_t size = g.height if along_x else g.width
    cdef Py_ssize_t step_across = g.row_stride if along_x else g.col_stride
    cdef Py_ssize_t step_along = g.col_stride if along_x else g.row_stride
    cdef Py_ssize_t p0, i
    cdef floating t, w0, w1, v, total = 0
    if not (x > -1.0 and x < <double>size):
        return 0
    p0 = <Py_ssize_t>floor(x)
    t = <floating>(x - <double>p0)
    w0 = 1 - t if p0 >= 0 else 0
    w1 = t if p0 + 1 < size else 0
    for i in range(n):
        v = 0
        if w0 != 0:
            v = v + w0 * plane[p0 * step_across + (first + i) * step_along]
        if w1 != 0:
            v = v + w1 * plane[(p0 + 1) * step_across + (first + i) * step_along]
        total = total + w[i] * v
    return total


cdef inline double column_line(const floating* columns, double x, Py_ssize_t x0,
                               Py_ssize_t x1) noexcept nogil:
    """The integral along a bin's column edge at x from its row's column sums (see
    column_sums, over [x0, x1)): the sums interpolated linearly at x, 0 outside."""
    cdef Py_ssize_t p0
    cdef double t, total = 0
    if not (x > -1.0 and x < <double>x1):
        return 0
    p0 = <Py_ssize_t>floor(x)
    t = x - <double>p0
    if p0 >= x0:
        total = (1.0 - t) * <double>columns[p0]
    if p0 + 1 >= x0 and p0 + 1 < x1:
        total = total + t * <double>columns[p0 + 1]
    return total


cdef bint box_backward_roi(const KernelCall* call, Scratch* scratch, Py_ssize_t k,
                           const floating* type_tag) noexcept nogil:
    """Box gradient, work item k: mmcv's derivative of every bin of RoI k w.r.t. its box
    corners (in input coordinates: times spatial_scale), summed over channels, then bins,
    in one order; row k of the (K, 5) result, 0 in the batch column. On a channels-first
    map a bin row's column sums (as the forward's) give its values and its column-edge
    integrals at once."""
    cdef const Geometry* g = &call.g
    cdef TentTable t = table_in(scratch.buffers[0], scratch.buffers[1], scratch.buffers[2], g,
                                type_tag)
    cdef floating* columns = <floating*>scratch.buffers[3]
    cdef const floating* image = <const floating*>call.features + call.batch_index[k] * g.image_stride
    cdef const floating* grad_roi = <const floating*>call.values + k * g.out_roi_stride
    cdef floating* grad_box = <floating*>call.result + 5 * k
    cdef double s = call.spatial_scale
    cdef double gx1 = 0, gy1 = 0, gx2 = 0, gy2 = 0
    cdef double grad, value, line_x1, line_x2, px1, px2, py1, py2, height, width
    cdef double fw0, fw1, fh0, fh1
    cdef Py_ssize_t ph, pw, c, y0, ny, x0, nx, span0, span1
    cdef const floating* plane
    cdef const floating* wy
    cdef const floating* wx
    cdef floating area
    grad_box[0] = grad_box[1] = grad_box[2] = grad_box[3] = grad_box[4] = 0
    if not roi_tents(&t, <const floating*>call.boxes + 4 * k, s, g):
        return True
    area = <floating>t.area
    column_span(&t, g, &span0, &span1)
    for c in range(g.channels):
        plane = image + c * g.channel_stride
        for ph in range(g.pooled_h):
            wy, y0, ny = <const floating*>t.wy + ph * g.height, t.y_first[ph], t.y_count[ph]
            height = t.bin_y2[ph] - t.bin_y1[ph]
            fh0 = 1.0 - <double>ph / <double>g.pooled_h
            fh1 = 1.0 - <double>(ph + 1) / <double>g.pooled_h
            if not g.channels_last:
                column_sums(columns, plane, g, wy, y0, ny, span0, span1)
            for pw in range(g.pooled_w):
                grad = <double>grad_roi[c * g.out_channel_stride
                                        + (ph * g.pooled_w + pw) * g.out_bin_stride]
                if grad / t.area == 0:  # as mmcv: no gradient
                    continue
                wx, x0, nx = <const floating*>t.wx + pw * g.width, t.x_first[pw], t.x_count[pw]
                width = t.bin_x2[pw] - t.bin_x1[pw]
                fw0 = 1.0 - <double>pw / <double>g.pooled_w
                fw1 = 1.0 - <double>(pw + 1) / <double>g.pooled_w
                if g.channels_last:
                    value = <double>(bin_value(plane, g, wy, y0, ny, wx, x0, nx) / area)
                    line_x1 = <double>line_at(plane, g, t.bin_x1[pw], False, wy, y0, ny)
                    line_x2 = <double>line_at(plane, g, t.bin_x2[pw], False, wy, y0, ny)
                else:
                    value = <double>(weighted_sum(columns + x0, wx, nx) / area)
                    line_x1 = column_line(columns, t.bin_x1[pw], span0, span1)
                    line_x2 = column_line(columns, t.bin_x2[pw], span0, span1)
                px1 = (-line_x1 + height * value) / t.area * s
                px2 = (line_x2 - height * value) / t.area * s
                py1 = (-<double>line_at(plane, g, t.bin_y1[ph], True, wx, x0, nx)
                       + width * value) / t.area * s
                py2 = (<double>line_at(plane, g, t.bin_y2[ph], True, wx, x0, nx)
                       - width * value) / t.area * s
                gx1 += (px1 * fw0 + px2 * fw1) * grad
                gy1 += (py1 * fh0 + py2 * fh1) * grad
                gx2 += (px2 * (1.0 - fw1) + px1 * (1.0 - fw0)) * grad
                gy2 += (py2 * (1.0 - fh1) + py1 * (1.0 - fh0)) * grad
    grad_box[1], grad_box[2] = <floating>gx1, <floating>gy1
    grad_box[3], grad_box[4] = <floating>gx2, <floating>gy2
    return True


cdef Py_ssize_t run(const floating[:, :, :, ::1] values, const floating* features,
                    const floating[:, ::1] boxes, const Py_ssize_t[::1] batch_index,
                    const Py_ssize_t[::1] roi_order, const Py_ssize_t[::1] image_first,
                    double spatial_scale, floating* result, Geometry g, int direction,
                    Py_ssize_t block, Py_ssize_t[::1] paused, Py_ssize_t first_item,
                    int n_threads):
    """Fill the KernelCall and run the work items of one direction (0 forward, 1 feature
    gradient, 2 box gradient), without the GIL."""
    cdef KernelCall call = kernel_call(g, &values[0, 0, 0, 0], result, features, &boxes[0, 0],
                                       batch_index, roi_order, image_first, spatial_scale, block)
    # tent weights, bin ranges, bin edges, and one bin's channels (sums or gradient shares)
    cdef ScratchSpec spec = scratch_spec(
        0, 0, (g.pooled_h * g.height + g.pooled_w * g.width) * sizeof(floating),
        2 * (g.pooled_h + g.pooled_w) * sizeof(Py_ssize_t),
        2 * (g.pooled_h + g.pooled_w) * sizeof(double), (2 * g.channels + g.width) * sizeof(floating))
    cdef Py_ssize_t* paused_at = paused_list(paused, n_threads)
    cdef Py_ssize_t done
    with nogil:
        if direction == 0:
            if g.channels_last:
                done = run_items(forward_roi[floating], &call, first_item, boxes.shape[0],
                                 &spec, n_threads)
            else:
                done = run_items(forward_planes[floating], &call, first_item,
                                 n_block_items(&g, block), &spec, n_threads, paused_at)
        elif direction == 1:
            done = run_items(backward_share[floating], &call, first_item,
                             n_block_items(&g, block), &spec, n_threads, paused_at)
        else:
            done = run_items(box_backward_roi[floating], &call, first_item, boxes.shape[0],
                             &spec, n_threads)
    return done


def forward(const floating[:, :, :, ::1] features, bint channels_last,
            const floating[:, ::1] boxes, const Py_ssize_t[::1] batch_index,
            const Py_ssize_t[::1] roi_order, const Py_ssize_t[::1] image_first,
            double spatial_scale, Py_ssize_t pooled_height, Py_ssize_t pooled_width,
            floating[:, :, :, ::1] out, bint packed, Py_ssize_t block, Py_ssize_t[::1] paused,
            Py_ssize_t first_item, int n_threads):
    """Precise RoI Pooling forward into `out`, one time slice of it (see
    _work_items.run_items): the next item to run from first_item on, 0 when done, -1 when
    out of memory. Work items: RoIs on a channels-last map; (image, block of `block`
    channels) on a channels-first one, whose RoIs roi_order and image_first group by image
    (`packed` is unused)."""
    cdef Geometry g = make_geometry(&features.shape[0], channels_last, pooled_height,
                                    pooled_width, 0, False)
    return run(features, NULL, boxes, batch_index, roi_order, image_first, spatial_scale,
               &out[0, 0, 0, 0], g, 0, block, paused, first_item, n_threads)


def backward(const floating[:, :, :, ::1] grad_output, bint channels_last,
             const floating[:, ::1] boxes, const Py_ssize_t[::1] batch_index,
             const Py_ssize_t[::1] roi_order, const Py_ssize_t[::1] image_first,
             double spatial_scale, Py_ssize_t pooled_height, Py_ssize_t pooled_width,
             floating[:, :, :, ::1] grad_input, bint packed, Py_ssize_t block,
             Py_ssize_t[::1] paused, Py_ssize_t first_item, int n_threads):
    """Gradient of prroi_pool w.r.t. the features (the adjoint of forward), accumulated into
    zeroed `grad_input`, one time slice of it (returns as forward does). Work items are
    (image, block of `block` channels): deterministic, no atomics."""
    cdef Geometry g = make_geometry(&grad_input.shape[0], channels_last, pooled_height,
                                    pooled_width, 0, False)
    return run(grad_output, NULL, boxes, batch_index, roi_order, image_first, spatial_scale,
               &grad_input[0, 0, 0, 0], g, 1, block, paused, first_item, n_threads)


def box_backward(const floating[:, :, :, ::1] grad_output, bint channels_last,
                 const floating[:, ::1] boxes, const Py_ssize_t[::1] batch_index,
                 const Py_ssize_t[::1] roi_order, const Py_ssize_t[::1] image_first,
                 double spatial_scale, Py_ssize_t pooled_height, Py_ssize_t pooled_width,
                 const floating[:, :, :, ::1] features, floating[:, ::1] grad_boxes,
                 bint packed, Py_ssize_t block, Py_ssize_t[::1] paused, Py_ssize_t first_item,
                 int n_threads):
    """Gradient of prroi_pool w.r.t. the box corners into (K, 5) `grad_boxes` (every row
    written: 0 in the batch column), one time slice of it (returns as forward does). One
    work item per RoI: each writes its own row."""
    cdef Geometry g = make_geometry(&features.shape[0], channels_last, pooled_height,
                                    pooled_width, 0, False)
    return run(grad_output, &features[0, 0, 0, 0], boxes, batch_index, roi_order, image_first,
               spatial_scale, &grad_boxes[0, 0], g, 2, block, paused, first_item, n_threads)


KERNELS = {"forward": forward, "backward": backward, "box_backward": box_backward}
