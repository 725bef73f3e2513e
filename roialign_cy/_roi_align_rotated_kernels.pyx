# The rotated RoIAlign kernels (roi_align_rotated, roi_align_rotated_backward). Private:
# _roi_align_rotated.py validates every argument and hands over private, canonical arrays;
# box rows are (cx, cy, w, h, theta) in the features' dtype, theta already in radians,
# counter-clockwise (the wrapper converts the angle exactly as detectron2 does).
#
# Every formula is detectron2's ROIAlignRotated (mmcv's with aligned=False), evaluated in the
# features' float type T in the same order. What is new, as in _sample_table: only samples
# inside [-1, H] x [-1, W] are visited (an outside sample contributes 0 there too). Along
# one row of a bin's grid (fixed iy) the sample coordinates y and x are monotone in ix (every
# rounding step is), so the inside samples form one run, found by bisection; the rows that can
# reach the map (those within its preimage under the rotation) are found the same way. Where
# T (or detectron2's float32 sample index) rounds neighbouring samples of a huge bin to one
# coordinate, rows and columns go by runs of equal coordinates: a run is found by bisection
# and, past LONGEST_UNMERGED_RUN, taken once with its length as weight (shorter runs are
# walked, detectron2's sums bit for bit). Work is then bounded by the map, not the box. No
# table grows with the grid: samples are gathered in chunks of CHUNK taps per thread.
#
# Channels-first maps with many RoIs per image run packed (as roi_align's packed kernels):
# a work item packs one block of channels pixel-major (_channel_blocks), in cache, and pools
# (or accumulates the gradient of) every RoI of its image from it, through a Geometry that
# describes the packed block as a channels-last image of `block` channels. Each output
# element still sums the same terms in the same order: the numbers do not change.

from libc.float cimport DBL_EPSILON, FLT_EPSILON
from libc.math cimport ceil, cos, fabs, floor, fmax, fmin, isfinite, sin
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
from roialign_cy._sample_table cimport (
    LONGEST_UNMERGED_RUN,
    coordinate_run_end,
    first_passing,
    floating,
    passed,
    sample_coordinate,
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

cdef enum:
    CHUNK = 256          # taps gathered at once (per thread: 4 offsets and 4 weights each)
    SMALL_AXIS = 16      # up to this many samples per bin along an axis are all walked
# Loop bounds stay below this many samples per bin and axis (detectron2's int would overflow
# long before).
cdef double MAX_GRID = 4611686018427387904.0  # 2**62


cdef struct RotatedRoI:
    # One RoI's geometry in T (held in double, exactly), detectron2's names.
    double center_h, center_w, start_h, start_w, bin_h, bin_w, cos_t, sin_t
    double grid_h, grid_w        # samples per bin along each axis (as doubles)
    double n_h, n_w              # the same, capped for loops
    double count                 # forward divisor max(grid_h * grid_w, 1), in T
    double backward_count        # backward divisor grid_h * grid_w, in T
    bint finite                  # every parameter finite (else no sample lies inside)
    double epsilon               # T's machine epsilon


cdef inline RotatedRoI rotated_roi(const floating* box, floating spatial_scale,
                                   const Geometry* g) noexcept nogil:
    """detectron2's per-RoI parameters for box (cx, cy, w, h, theta), in type T."""
    cdef RotatedRoI r
    cdef floating offset = <floating>0.5 if g.aligned else <floating>0.0
    cdef floating center_w = box[0] * spatial_scale - offset
    cdef floating center_h = box[1] * spatial_scale - offset
    cdef floating roi_w = box[2] * spatial_scale
    cdef floating roi_h = box[3] * spatial_scale
    cdef floating theta = box[4]
    if not g.aligned:  # mmcv's legacy mode: boxes below 1x1 are stretched to 1x1
        roi_w = roi_w if roi_w > 1 else <floating>1.0
        roi_h = roi_h if roi_h > 1 else <floating>1.0
    r.center_h, r.center_w = center_h, center_w
    r.cos_t = <floating>cos(<double>theta)
    r.sin_t = <floating>sin(<double>theta)
    r.start_h = <floating>(-<double>roi_h / 2.0)
    r.start_w = <floating>(-<double>roi_w / 2.0)
    r.bin_h = roi_h / <floating>g.pooled_h
    r.bin_w = roi_w / <floating>g.pooled_w
    if g.sampling_ratio > 0:
        r.grid_h = g.sampling_ratio
        r.grid_w = g.sampling_ratio
    else:
        r.grid_h = fmax(ceil(<double>(roi_h / <floating>g.pooled_h)), 0.0)
        r.grid_w = fmax(ceil(<double>(roi_w / <floating>g.pooled_w)), 0.0)
    r.finite = (isfinite(r.center_h) and isfinite(r.center_w) and isfinite(r.bin_h)
                and isfinite(r.bin_w) and isfinite(r.start_h) and isfinite(r.start_w)
                and isfinite(r.grid_h) and isfinite(r.grid_w))
    r.n_h = fmin(r.grid_h, MAX_GRID) if r.finite else 0.0
    r.n_w = fmin(r.grid_w, MAX_GRID) if r.finite else 0.0
    r.count = <floating>fmax(r.grid_h * r.grid_w, 1.0)
    r.backward_count = <floating>(r.grid_h * r.grid_w)
    r.epsilon = FLT_EPSILON if floating is float else DBL_EPSILON
    return r


cdef inline void sample_point(const RotatedRoI* r, floating yy, floating xx, floating* y,
                              floating* x) noexcept nogil:
    """Rotate (yy, xx) about the centre and translate, as detectron2 does."""
    cdef floating c = <floating>r.cos_t
    cdef floating s = <floating>r.sin_t
    y[0] = yy * c - xx * s + <floating>r.center_h
    x[0] = yy * s + xx * c + <floating>r.center_w


cdef inline floating coordinate_at(const RotatedRoI* r, floating yy, Py_ssize_t pw, double ix,
                                   bint want_x) noexcept nogil:
    """y (or x, want_x) of sample ix of the row at yy in bin column pw."""
    cdef floating y, x
    cdef floating xx = sample_coordinate(<floating>r.start_w, <floating>r.bin_w, pw, ix, r.grid_w)
    sample_point(r, yy, xx, &y, &x)
    return x if want_x else y


cdef inline double first_passing_rotated(const RotatedRoI* r, floating yy, Py_ssize_t pw,
                                         double lo, double hi, bint want_x, floating bound,
                                         bint rising, bint strict) noexcept nogil:
    """Smallest ix in [lo, hi) whose y (x) has passed `bound` (monotone along the row), else hi."""
    cdef double mid
    cdef int steps = 0
    while lo < hi and steps < 2200:
        mid = lo + floor((hi - lo) * 0.5)
        if passed(coordinate_at(r, yy, pw, mid, want_x), bound, rising, strict):
            hi = mid
        else:
            lo = mid + 1.0
        steps += 1
    return lo


cdef inline void inside_run(const RotatedRoI* r, floating yy, Py_ssize_t pw, const Geometry* g,
                            double* first, double* end) noexcept nogil:
    """[first, end): the samples of the row at yy in bin column pw that lie inside the map.

    y moves against sin (non-increasing when sin > 0), x with cos; each of the four bounds is
    crossed once along the row, so each end of the run is one bisection.
    """
    cdef double lo = 0.0, hi = r.n_w
    cdef floating low = -1
    cdef floating height = <floating>g.height
    cdef floating width = <floating>g.width
    cdef bint y_rising = not (<floating>r.sin_t > 0)
    cdef bint x_rising = not (<floating>r.cos_t < 0)
    if y_rising:
        lo = fmax(lo, first_passing_rotated(r, yy, pw, 0.0, r.n_w, False, low, True, False))
        hi = fmin(hi, first_passing_rotated(r, yy, pw, 0.0, r.n_w, False, height, True, True))
    else:
        lo = fmax(lo, first_passing_rotated(r, yy, pw, 0.0, r.n_w, False, height, False, False))
        hi = fmin(hi, first_passing_rotated(r, yy, pw, 0.0, r.n_w, False, low, False, True))
    if lo >= hi:
        first[0] = end[0] = 0.0
        return
    if x_rising:
        lo = fmax(lo, first_passing_rotated(r, yy, pw, lo, hi, True, low, True, False))
        hi = fmin(hi, first_passing_rotated(r, yy, pw, lo, hi, True, width, True, True))
    else:
        lo = fmax(lo, first_passing_rotated(r, yy, pw, lo, hi, True, width, False, False))
        hi = fmin(hi, first_passing_rotated(r, yy, pw, lo, hi, True, low, False, True))
    first[0] = lo
    end[0] = hi if hi > lo else lo


cdef inline void yy_window(double center, double slope, double t_lo, double t_hi, double low,
                           double high, double* yy_lo, double* yy_hi) noexcept nogil:
    """Narrow [yy_lo, yy_hi] to where yy * slope + t + center can lie in [low, high] for some t
    in [t_lo, t_hi] (real arithmetic; the caller pads the bounds for rounding)."""
    cdef double a = low - center - t_hi
    cdef double b = high - center - t_lo
    if slope > 0:
        yy_lo[0] = fmax(yy_lo[0], a / slope)
        yy_hi[0] = fmin(yy_hi[0], b / slope)
    elif slope < 0:
        yy_lo[0] = fmax(yy_lo[0], b / slope)
        yy_hi[0] = fmin(yy_hi[0], a / slope)
    elif not (a <= 0 and 0 <= b):
        yy_hi[0] = yy_lo[0] - 1.0  # empty


cdef inline bint row_bounds(const RotatedRoI* r, Py_ssize_t pw, const Geometry* g,
                            double* yy_lo, double* yy_hi) noexcept nogil:
    """[yy_lo, yy_hi]: where a row of bin column pw can hold samples inside the map (False
    if nowhere), from real arithmetic padded several times over for T's rounding.

    Rows are lines at the box's angle, so a row with an inside sample lies within the map's
    preimage, yy = (y - cy) cos + (x - cx) sin over its corners. Such a sample's yy and xx are
    as small as the map and the centre, so each rounding step of its y (or x) errs by at most
    T's epsilon times `near`; the pad depends on the map and the centre, never on the box's
    size. Two more bounds narrow it to the rows of bin column pw that can reach the map along
    each axis; over a whole bin, xx goes as far as the box, and the float32 sample index
    errs by FLT_EPSILON * |bin|: their pad is `far`.
    """
    cdef double near = 1.0 + 16.0 * r.epsilon * (fabs(r.center_h) + fabs(r.center_w)
                                                  + g.height + g.width + 2.0)
    cdef double magnitude = (fabs(r.center_h) + fabs(r.center_w) + fabs(r.start_h) * 2
                             + fabs(r.start_w) * 2 + g.height + g.width + 1.0)
    cdef double far = (1.0 + 16.0 * r.epsilon * magnitude
                       + 4.0 * FLT_EPSILON * (fabs(r.bin_h) + fabs(r.bin_w)))
    cdef double x_lo = r.start_w + pw * r.bin_w
    cdef double x_hi = r.start_w + (pw + 1) * r.bin_w
    cdef double a, b, c, d
    a, b = (-1.0 - near - r.center_h) * r.cos_t, (g.height + near - r.center_h) * r.cos_t
    c, d = (-1.0 - near - r.center_w) * r.sin_t, (g.width + near - r.center_w) * r.sin_t
    yy_lo[0] = fmin(a, b) + fmin(c, d) - near
    yy_hi[0] = fmax(a, b) + fmax(c, d) + near
    x_lo, x_hi = fmin(x_lo, x_hi) - far, fmax(x_lo, x_hi) + far
    # y = yy * cos - xx * sin + cy, x = yy * sin + xx * cos + cx
    yy_window(r.center_h, r.cos_t, fmin(-x_lo * r.sin_t, -x_hi * r.sin_t),
              fmax(-x_lo * r.sin_t, -x_hi * r.sin_t), -1.0 - far, g.height + far, yy_lo, yy_hi)
    yy_window(r.center_w, r.sin_t, fmin(x_lo * r.cos_t, x_hi * r.cos_t),
              fmax(x_lo * r.cos_t, x_hi * r.cos_t), -1.0 - far, g.width + far, yy_lo, yy_hi)
    return yy_lo[0] <= yy_hi[0]


cdef inline void row_window(const RotatedRoI* r, Py_ssize_t ph, Py_ssize_t pw,
                            const Geometry* g, double* first, double* end,
                            const floating* type_tag) noexcept nogil:
    """Rows [first, end) of bin (ph, pw) whose yy lies within row_bounds: bisection over the
    rows' own coordinates in T (monotone in iy), so no rounding needs a pad here."""
    cdef double yy_lo, yy_hi
    cdef bint rising = r.bin_h >= 0
    cdef floating start = <floating>r.start_h
    cdef floating bin_h = <floating>r.bin_h
    first[0] = end[0] = 0.0
    if not row_bounds(r, pw, g, &yy_lo, &yy_hi):
        return
    if rising:
        first[0] = first_passing(start, bin_h, ph, r.grid_h, 0.0, r.n_h, <floating>yy_lo,
                                 True, False)
        end[0] = first_passing(start, bin_h, ph, r.grid_h, first[0], r.n_h, <floating>yy_hi,
                               True, True)
    else:
        first[0] = first_passing(start, bin_h, ph, r.grid_h, 0.0, r.n_h, <floating>yy_hi,
                                 False, False)
        end[0] = first_passing(start, bin_h, ph, r.grid_h, first[0], r.n_h, <floating>yy_lo,
                               False, True)


cdef inline bint tap(const RotatedRoI* r, const Geometry* g, floating yy, floating xx,
                     Py_ssize_t* offsets, floating* weights) noexcept nogil:
    """detectron2's bilinear taps of the sample at (yy, xx); False when it lies outside."""
    cdef floating y, x, ly, lx, hy, hx
    cdef Py_ssize_t y_low, x_low, y_high, x_high
    sample_point(r, yy, xx, &y, &x)
    if not (y >= -1 and y <= g.height and x >= -1 and x <= g.width):
        return False
    if y < 0:
        y = 0
    if x < 0:
        x = 0
    y_low = <Py_ssize_t>y
    x_low = <Py_ssize_t>x
    if y_low >= g.height - 1:
        y_high = y_low = g.height - 1
        y = <floating>y_low
    else:
        y_high = y_low + 1
    if x_low >= g.width - 1:
        x_high = x_low = g.width - 1
        x = <floating>x_low
    else:
        x_high = x_low + 1
    ly = y - <floating>y_low
    lx = x - <floating>x_low
    hy = <floating>(1.0 - <double>ly)
    hx = <floating>(1.0 - <double>lx)
    weights[0], weights[1], weights[2], weights[3] = hy * hx, hy * lx, ly * hx, ly * lx
    offsets[0] = y_low * g.row_stride + x_low * g.col_stride
    offsets[1] = y_low * g.row_stride + x_high * g.col_stride
    offsets[2] = y_high * g.row_stride + x_low * g.col_stride
    offsets[3] = y_high * g.row_stride + x_high * g.col_stride
    return True


cdef inline void gather(const floating* image, const Geometry* g, Py_ssize_t c0, Py_ssize_t c1,
                        const Py_ssize_t* offsets, const floating* weights, Py_ssize_t n,
                        floating* acc) noexcept nogil:
    """acc[c] += each of the n samples' w1*v1 + w2*v2 + w3*v3 + w4*v4, in sample order."""
    cdef Py_ssize_t c, s
    cdef floating a, w0, w1, w2, w3
    cdef const floating* plane
    cdef const floating* v0
    cdef const floating* v1
    cdef const floating* v2
    cdef const floating* v3
    if g.channels_last:  # channels contiguous: the channel loop is the inner, vector loop
        for s in range(n):
            w0, w1, w2, w3 = weights[4 * s], weights[4 * s + 1], weights[4 * s + 2], weights[4 * s + 3]
            v0, v1 = image + offsets[4 * s], image + offsets[4 * s + 1]
            v2, v3 = image + offsets[4 * s + 2], image + offsets[4 * s + 3]
            for c in range(c0, c1):
                acc[c] += w0 * v0[c] + w1 * v1[c] + w2 * v2[c] + w3 * v3[c]
    else:
        for c in range(c0, c1):
            plane = image + c * g.channel_stride
            a = acc[c]
            for s in range(n):
                a += (weights[4 * s] * plane[offsets[4 * s]]
                      + weights[4 * s + 1] * plane[offsets[4 * s + 1]]
                      + weights[4 * s + 2] * plane[offsets[4 * s + 2]]
                      + weights[4 * s + 3] * plane[offsets[4 * s + 3]])
            acc[c] = a


cdef inline void scatter(floating* grad_image, const Geometry* g, const floating* grad_bin,
                         Py_ssize_t c0, Py_ssize_t c1, floating count,
                         const Py_ssize_t* offsets, const floating* weights,
                         Py_ssize_t n) noexcept nogil:
    """Each of the n samples sends grad * w_i / count to its 4 taps (detectron2's order)."""
    cdef Py_ssize_t c, s, i
    cdef floating grad, w
    cdef floating* plane
    if g.channels_last:  # channels contiguous: the channel loop is the inner, vector loop
        for s in range(n):
            for i in range(4):
                plane = grad_image + offsets[4 * s + i]
                w = weights[4 * s + i]
                for c in range(c0, c1):
                    plane[c] += grad_bin[c] * w / count
        return
    for c in range(c0, c1):
        plane = grad_image + c * g.channel_stride
        grad = grad_bin[c * g.out_channel_stride]
        for s in range(n):
            for i in range(4):
                plane[offsets[4 * s + i]] += grad * weights[4 * s + i] / count


cdef inline void flush(const RotatedRoI* r, const Geometry* g, const floating* image,
                       floating* acc, floating* grad_image, const floating* grad_bin,
                       Py_ssize_t c0, Py_ssize_t c1, const Py_ssize_t* offsets,
                       const floating* weights, Py_ssize_t n) noexcept nogil:
    """Gather the n taps held into acc (forward, image given) or scatter grad_bin (backward)."""
    if image != NULL:
        gather(image, g, c0, c1, offsets, weights, n, acc)
    else:
        scatter(grad_image, g, grad_bin, c0, c1, <floating>r.backward_count, offsets, weights, n)


cdef inline bint add_sample(const RotatedRoI* r, const Geometry* g, floating yy, floating xx,
                            floating weight, const floating* image, floating* acc,
                            floating* grad_image, const floating* grad_bin, Py_ssize_t c0,
                            Py_ssize_t c1, Py_ssize_t* offsets, floating* weights,
                            Py_ssize_t* n) noexcept nogil:
    """Hold the taps of the sample at (yy, xx), scaled by weight, as the n-th of the chunk,
    flushing a full chunk; False when the sample lies outside the map."""
    cdef Py_ssize_t i
    if not tap(r, g, yy, xx, &offsets[4 * n[0]], &weights[4 * n[0]]):
        return False
    if weight != 1:
        for i in range(4 * n[0], 4 * n[0] + 4):
            weights[i] = weights[i] * weight
    n[0] += 1
    if n[0] == CHUNK:
        flush(r, g, image, acc, grad_image, grad_bin, c0, c1, offsets, weights, n[0])
        n[0] = 0
    return True


cdef inline double sample_run(floating start, floating bin_size, Py_ssize_t p, double i,
                              double grid, double end, bint runs,
                              floating* coordinate) noexcept nogil:
    """The coordinate of sample i along one axis (into coordinate), and the end of the run
    of samples that share it: i + 1, unless `runs` (an axis too long to walk)."""
    coordinate[0] = sample_coordinate(start, bin_size, p, i, grid)
    if runs:
        return coordinate_run_end(start, bin_size, p, grid, i, end, coordinate[0])
    return i + 1.0


cdef inline double run_passes(double first, double end, double* weight) noexcept nogil:
    """How a run of equal samples [first, end) is taken: walked sample by sample (returns its
    length, weight 1) or, past LONGEST_UNMERGED_RUN, once with its length as weight."""
    if end - first > LONGEST_UNMERGED_RUN:
        weight[0] = end - first
        return 1.0
    weight[0] = 1.0
    return end - first


cdef inline void walk_bin(const RotatedRoI* r, const Geometry* g, Py_ssize_t ph, Py_ssize_t pw,
                          const floating* image, floating* acc, floating* grad_image,
                          const floating* grad_bin, Py_ssize_t c0, Py_ssize_t c1,
                          Py_ssize_t* offsets, floating* weights) noexcept nogil:
    """Visit the inside samples of bin (ph, pw) in detectron2's order, CHUNK at a time:
    gather them into acc (forward, image given) or scatter grad_bin (backward).

    A row (column) of more than LONGEST_UNMERGED_RUN samples goes by runs of one coordinate
    (see the top of this file); a shorter one sample by sample.
    """
    cdef double iy, ix, row_first, row_end, first, end, next_row, next_col
    cdef double row_pass, col_pass, row_passes, col_passes, row_weight, col_weight
    cdef floating yy, xx, weight
    cdef Py_ssize_t n = 0
    cdef bint row_runs = r.n_h > LONGEST_UNMERGED_RUN
    cdef bint col_runs = r.n_w > LONGEST_UNMERGED_RUN
    if r.n_h > SMALL_AXIS:
        row_window(r, ph, pw, g, &row_first, &row_end,
                   image if image != NULL else <const floating*>grad_image)
    else:
        row_first, row_end = 0.0, r.n_h
    iy = row_first
    if not (row_runs or col_runs):  # every box of ordinary size: the plain walk
        while iy < row_end:
            yy = sample_coordinate(<floating>r.start_h, <floating>r.bin_h, ph, iy, r.grid_h)
            if r.n_w > SMALL_AXIS:
                inside_run(r, yy, pw, g, &first, &end)
            else:
                first, end = 0.0, r.n_w
            ix = first
            while ix < end:
                xx = sample_coordinate(<floating>r.start_w, <floating>r.bin_w, pw, ix, r.grid_w)
                add_sample(r, g, yy, xx, 1, image, acc, grad_image, grad_bin, c0, c1, offsets,
                           weights, &n)
                ix += 1.0
            iy += 1.0
    else:  # a long axis: by runs of one coordinate
        while iy < row_end:
            next_row = sample_run(<floating>r.start_h, <floating>r.bin_h, ph, iy, r.grid_h,
                                  row_end, row_runs, &yy)
            row_passes, row_weight = 1.0, 1.0
            if row_runs:
                row_passes = run_passes(iy, next_row, &row_weight)
            if r.n_w > SMALL_AXIS:
                inside_run(r, yy, pw, g, &first, &end)  # the same for every row of the run
            else:
                first, end = 0.0, r.n_w
            row_pass = 0.0
            while first < end and row_pass < row_passes:
                ix = first
                while ix < end:
                    next_col = sample_run(<floating>r.start_w, <floating>r.bin_w, pw, ix, r.grid_w,
                                          end, col_runs, &xx)
                    col_passes = run_passes(ix, next_col, &col_weight)
                    weight = <floating>(row_weight * col_weight)
                    col_pass = 0.0
                    while col_pass < col_passes and add_sample(r, g, yy, xx, weight, image, acc,
                                                               grad_image, grad_bin, c0, c1,
                                                               offsets, weights, &n):
                        col_pass += 1.0
                    ix = next_col
                row_pass += 1.0
            iy = next_row
    if n > 0:
        flush(r, g, image, acc, grad_image, grad_bin, c0, c1, offsets, weights, n)


cdef bint forward_roi(const KernelCall* call, Scratch* scratch, Py_ssize_t item,
                      const floating* type_tag) noexcept nogil:
    """Forward: every channel of the item's RoI k, bin by bin."""
    cdef Py_ssize_t k = roi_of(call, item)
    cdef const Geometry* g = &call.g
    cdef const floating* image = <const floating*>call.values + call.batch_index[k] * g.image_stride
    cdef floating* out_roi = <floating*>call.result + k * g.out_roi_stride
    cdef Py_ssize_t* offsets = <Py_ssize_t*>scratch.buffers[0]
    cdef floating* weights = <floating*>scratch.buffers[1]
    cdef floating* acc = <floating*>scratch.buffers[2]
    cdef RotatedRoI r = rotated_roi(<const floating*>call.boxes + 5 * k,
                                    <floating>call.spatial_scale, g)
    cdef floating count = <floating>r.count
    cdef Py_ssize_t ph, pw, c, b
    for ph in range(g.pooled_h):
        for pw in range(g.pooled_w):
            b = ph * g.pooled_w + pw
            for c in range(g.channels):
                acc[c] = 0
            walk_bin(&r, g, ph, pw, image, acc, <floating*>NULL, <const floating*>NULL, 0,
                     g.channels, offsets, weights)
            for c in range(g.channels):
                out_roi[c * g.out_channel_stride + b * g.out_bin_stride] = acc[c] / count
    return True


cdef bint backward_share(const KernelCall* call, Scratch* scratch, Py_ssize_t item,
                         const floating* type_tag) noexcept nogil:
    """Backward: the gradient of one channel block of one image, from all its RoIs.

    Items own disjoint elements, and each element sums its contributions in detectron2's
    order (RoIs ascending, then bins, samples, taps): deterministic for any thread count.
    """
    cdef const Geometry* g = &call.g
    cdef BlockItem it = block_item(item, g.channels, call.block)
    cdef floating* grad_image = <floating*>call.result + it.image * g.image_stride
    cdef Py_ssize_t* offsets = <Py_ssize_t*>scratch.buffers[0]
    cdef floating* weights = <floating*>scratch.buffers[1]
    cdef const floating* grad_roi
    cdef RotatedRoI r
    cdef Py_ssize_t last = call.image_first[it.image + 1]
    cdef Py_ssize_t j, k, ph, pw
    for j in range(resume_from(scratch, call.image_first[it.image]), last):
        k = call.roi_order[j]
        r = rotated_roi(<const floating*>call.boxes + 5 * k, <floating>call.spatial_scale, g)
        grad_roi = <const floating*>call.values + k * g.out_roi_stride
        for ph in range(g.pooled_h):
            for pw in range(g.pooled_w):
                walk_bin(&r, g, ph, pw, <const floating*>NULL, <floating*>NULL, grad_image,
                         grad_roi + (ph * g.pooled_w + pw) * g.out_bin_stride, it.first_channel,
                         it.first_channel + it.n_channels, offsets, weights)
        if pause_at(scratch, j + 1, last):
            break
    return True


cdef inline Geometry packed_geometry(const Geometry* g, Py_ssize_t block) noexcept nogil:
    """The packed (H*W, block) copy of `block` channels of one image, as a channels-last
    image, with pooled blocks (n_bins, block)."""
    cdef Geometry p = g[0]
    p.channels, p.channels_last = block, True
    p.channel_stride, p.row_stride, p.col_stride = 1, g.width * block, block
    p.out_channel_stride, p.out_bin_stride = 1, block
    p.image_stride = g.height * g.width * block
    p.out_roi_stride = g.pooled_h * g.pooled_w * block
    return p


cdef bint forward_block(const KernelCall* call, Scratch* scratch, Py_ssize_t item,
                        const floating* type_tag) noexcept nogil:
    """Packed forward: pack one channel block of one image, pool all its RoIs from it."""
    cdef const Geometry* g = &call.g
    cdef BlockItem it = block_item(item, g.channels, call.block)
    cdef Geometry pg = packed_geometry(g, call.block)
    cdef Py_ssize_t* offsets = <Py_ssize_t*>scratch.buffers[0]
    cdef floating* weights = <floating*>scratch.buffers[1]
    cdef floating* pooled = <floating*>scratch.buffers[2]
    cdef floating* packed = <floating*>scratch.buffers[3]
    cdef Py_ssize_t n_bins = g.pooled_h * g.pooled_w
    cdef RotatedRoI r
    cdef floating count
    cdef Py_ssize_t last = call.image_first[it.image + 1]
    cdef Py_ssize_t j, k, ph, pw, i
    if call.image_first[it.image] == last:
        return True
    pack_block(<const floating*>call.values + it.image * g.image_stride, g, it.first_channel,
               it.n_channels, packed, call.block)
    for j in range(resume_from(scratch, call.image_first[it.image]), last):
        k = call.roi_order[j]
        r = rotated_roi(<const floating*>call.boxes + 5 * k, <floating>call.spatial_scale, g)
        count = <floating>r.count
        memset(pooled, 0, n_bins * call.block * sizeof(floating))
        for ph in range(g.pooled_h):
            for pw in range(g.pooled_w):
                walk_bin(&r, &pg, ph, pw, packed, pooled + (ph * g.pooled_w + pw) * call.block,
                         <floating*>NULL, <const floating*>NULL, 0, call.block, offsets,
                         weights)
        for i in range(n_bins * call.block):
            pooled[i] = pooled[i] / count
        unpack_roi(pooled, <floating*>call.result + k * g.out_roi_stride, g, it.first_channel,
                   it.n_channels, call.block)
        if pause_at(scratch, j + 1, last):
            break
    return True


cdef bint backward_block(const KernelCall* call, Scratch* scratch, Py_ssize_t item,
                         const floating* type_tag) noexcept nogil:
    """Packed backward: accumulate all the image's RoIs into a packed block, then write it
    out once. Bit-identical to backward_share."""
    cdef const Geometry* g = &call.g
    cdef BlockItem it = block_item(item, g.channels, call.block)
    cdef Geometry pg = packed_geometry(g, call.block)
    cdef Py_ssize_t* offsets = <Py_ssize_t*>scratch.buffers[0]
    cdef floating* weights = <floating*>scratch.buffers[1]
    cdef floating* roi_grad = <floating*>scratch.buffers[2]
    cdef floating* packed = <floating*>scratch.buffers[3]
    cdef floating* grad_image = <floating*>call.result + it.image * g.image_stride
    cdef RotatedRoI r
    cdef Py_ssize_t last = call.image_first[it.image + 1]
    cdef Py_ssize_t j, k, ph, pw
    if call.image_first[it.image] == last:
        return True  # an image without RoIs keeps its zero gradient
    if scratch.resuming:  # the sums so far, saved when the item paused (exact copies)
        pack_block(grad_image, g, it.first_channel, it.n_channels, packed, call.block)
    else:
        memset(packed, 0, g.height * g.width * call.block * sizeof(floating))
    for j in range(resume_from(scratch, call.image_first[it.image]), last):
        k = call.roi_order[j]
        r = rotated_roi(<const floating*>call.boxes + 5 * k, <floating>call.spatial_scale, g)
        pack_roi(<const floating*>call.values + k * g.out_roi_stride, roi_grad, g,
                 it.first_channel, it.n_channels, call.block)
        for ph in range(g.pooled_h):
            for pw in range(g.pooled_w):
                walk_bin(&r, &pg, ph, pw, <const floating*>NULL, <floating*>NULL, packed,
                         roi_grad + (ph * g.pooled_w + pw) * call.block, 0, call.block,
                         offsets, weights)
        if pause_at(scratch, j + 1, last):
            break
    unpack_block(packed, grad_image, g, it.first_channel, it.n_channels, call.block)
    return True


cdef Py_ssize_t run(const floating[:, :, :, ::1] values, const floating[:, ::1] boxes,
                    const Py_ssize_t[::1] batch_index, const Py_ssize_t[::1] roi_order,
                    const Py_ssize_t[::1] image_first, double spatial_scale, floating* result,
                    Geometry g, bint backward, bint packed, Py_ssize_t block,
                    Py_ssize_t[::1] paused, Py_ssize_t first_item, int n_threads):
    """Fill the KernelCall and run the work items of the chosen kernel, without the GIL."""
    cdef KernelCall call = kernel_call(g, &values[0, 0, 0, 0], result, NULL, &boxes[0, 0],
                                       batch_index, roi_order, image_first, spatial_scale, block)
    cdef size_t taps = 4 * CHUNK * sizeof(Py_ssize_t)
    cdef size_t tap_weights = 4 * CHUNK * sizeof(floating)
    cdef ScratchSpec spec
    cdef Py_ssize_t* paused_at = paused_list(paused, n_threads)
    cdef Py_ssize_t done
    if packed:  # a pooled (or gradient) block of one RoI and a packed block of the map
        spec = scratch_spec(0, 0, taps, tap_weights,
                            g.pooled_h * g.pooled_w * block * sizeof(floating),
                            g.height * g.width * block * sizeof(floating))
    else:
        spec = scratch_spec(0, 0, taps, tap_weights,
                            0 if backward else g.channels * sizeof(floating))
    with nogil:
        if packed and backward:
            done = run_items(backward_block[floating], &call, first_item,
                             n_block_items(&g, block), &spec, n_threads, paused_at)
        elif packed:
            done = run_items(forward_block[floating], &call, first_item,
                             n_block_items(&g, block), &spec, n_threads, paused_at)
        elif backward:
            done = run_items(backward_share[floating], &call, first_item,
                             n_block_items(&g, block), &spec, n_threads, paused_at)
        else:
            done = run_items(forward_roi[floating], &call, first_item, boxes.shape[0], &spec,
                             n_threads)
    return done


def forward(const floating[:, :, :, ::1] features, bint channels_last,
            const floating[:, ::1] boxes, const Py_ssize_t[::1] batch_index,
            const Py_ssize_t[::1] roi_order, const Py_ssize_t[::1] image_first,
            double spatial_scale, Py_ssize_t pooled_height, Py_ssize_t pooled_width,
            Py_ssize_t sampling_ratio, bint aligned, floating[:, :, :, ::1] out,
            bint packed, Py_ssize_t block, Py_ssize_t[::1] paused, Py_ssize_t first_item,
            int n_threads):
    """Rotated RoIAlign forward into `out`, one time slice of it (see _work_items.run_items):
    the next item to run from first_item on, 0 when done, -1 when out of memory.

    features (N, C, H, W), or (N, H, W, C) when channels_last; boxes (K, 5) cx, cy, w, h,
    theta (radians, counter-clockwise); out (K, C, PH, PW) or (K, PH, PW, C). Work items are
    RoIs unless `packed`: then (image, block of `block` channels), with roi_order/image_first
    grouping the RoIs by image.
    """
    cdef Geometry g = make_geometry(features.shape, channels_last, pooled_height,
                                    pooled_width, sampling_ratio, aligned)
    return run(features, boxes, batch_index, roi_order, image_first, spatial_scale,
               &out[0, 0, 0, 0], g, False, packed, block, paused, first_item, n_threads)


def backward(const floating[:, :, :, ::1] grad_output, bint channels_last,
             const floating[:, ::1] boxes, const Py_ssize_t[::1] batch_index,
             const Py_ssize_t[::1] roi_order, const Py_ssize_t[::1] image_first,
             double spatial_scale, Py_ssize_t pooled_height, Py_ssize_t pooled_width,
             Py_ssize_t sampling_ratio, bint aligned, floating[:, :, :, ::1] grad_input,
             bint packed, Py_ssize_t block, Py_ssize_t[::1] paused, Py_ssize_t first_item,
             int n_threads):
    """Gradient of roi_align_rotated w.r.t. the features, accumulated into zeroed
    `grad_input`, one time slice of it (returns as forward does).

    Work items are (image, block of `block` channels): no two threads write the same element,
    no atomics; `packed` accumulates in cache-resident packed channel blocks.
    """
    cdef Geometry g = make_geometry(grad_input.shape, channels_last, pooled_height,
                                    pooled_width, sampling_ratio, aligned)
    return run(grad_output, boxes, batch_index, roi_order, image_first, spatial_scale,
               &grad_input[0, 0, 0, 0], g, True, packed, block, paused, first_item, n_threads)


KERNELS = {"forward": forward, "backward": backward}
