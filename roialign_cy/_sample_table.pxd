# The per-RoI sample table (the seed's `pre_calc`) and its helpers.
#
# Every formula here is torchvision's `roi_align`, evaluated in the features' float type T in
# the same order, so that the numbers agree to the last bit where torchvision's are defined.
# What is new: only samples that fall inside [-1, H] x [-1, W] are visited. A sample outside
# contributes 0 in torchvision too, so skipping it changes no number, but it bounds the work
# of a huge box with an adaptive grid by the size of the map instead of the size of the box:
# along each axis, sample coordinates are monotone in the sample index (every rounding step
# is), so the inside ones form one run, found by bisection; and where the float type can no
# longer tell neighbouring samples apart, equal coordinates are kept once with a repeat count.
#
# Grids finer than the map can resolve (MERGE_SAMPLES samples per RoI, or MERGE_AXIS along one
# axis) are not walked sample by sample at all. The bilinear weight of a sample is a product of
# a y factor and an x factor, so a bin's sum is separable: along each axis, the inside samples
# that fall in one pixel cell are merged into one entry holding the sums of their weights, in
# closed form (their coordinates are an arithmetic run). Work and memory then grow with the map
# cells a bin covers, never with the grid, and no float sum runs over more than a few entries
# (a float32 sum of 2**24 samples would stop growing). For max mode a cell keeps its first and
# last sample instead: the bilinear interpolant is linear along each axis inside a cell, so the
# bin's first maximum is always one of those.

from cpython.pyport cimport PY_SSIZE_T_MAX
from libc.math cimport ceil, floor, fmax
from libc.stdlib cimport free, malloc, realloc

ctypedef fused floating:
    float
    double

# Up to this many samples per bin are all evaluated, exactly torchvision's loop; beyond it the
# inside run is found by bisection (huge boxes with an adaptive grid, big sampling ratios).
cdef enum:
    SMALL_GRID = 64
# Samples sharing one coordinate are still stored one by one (torchvision's summation order,
# bit for bit) up to this many; a longer run is stored once with its repeat count.
cdef enum:
    LONGEST_UNMERGED_RUN = 1024
# Grids are merged per pixel cell (see above) from this many samples per RoI (PH*PW*grid_h*
# grid_w: a 7 x 7 output with sampling_ratio 74, or a box 512 feature pixels wide with the
# adaptive grid), or from this many along one axis (PH*grid_h). Below both, the numbers are
# torchvision's, bit for bit, and max mode's are even when merged.
cdef enum:
    MERGE_SAMPLES = 1 << 18
    MERGE_AXIS = 1 << 16
# A channels-first kernel reads one table of every sample's 4 taps per channel plane up to
# this many samples per RoI (12 MB a thread): every unmerged RoI. Beyond (a merged grid over
# a huge map region), it forms the taps from the axis tables, plane by plane.
cdef enum:
    TABLE_SAMPLES = 1 << 18


cdef struct AxisSample:
    # One sample coordinate along one axis, already clamped as in torchvision.
    Py_ssize_t low     # offset (in elements) of the lower neighbour row/column
    Py_ssize_t high    # offset of the upper neighbour (== low at the border)
    double frac_low    # weight of `low`  (1 - l, a value of type T held exactly)
    double frac_high   # weight of `high` (l)
    double repeats     # grid samples at this very coordinate: 1 unless the float type rounds
                       # neighbouring samples of a huge box to the same value


cdef struct RoIGrid:
    # Where the samples of one RoI lie: torchvision's roi_start, bin_size, roi_bin_grid.
    double start_y
    double start_x
    double bin_h
    double bin_w
    double grid_h      # samples per bin along y; >= 0, may exceed any integer type
    double grid_w
    double count       # torchvision's divisor: max(grid_h * grid_w, 1)


cdef struct SampleTable:
    # Scratch owned by one thread, reused for every RoI it handles (grown, never shrunk).
    Py_ssize_t n_bins              # PH * PW
    Py_ssize_t pooled_w            # PW
    Py_ssize_t* bin_first          # n_bins + 1: samples of bin b are [bin_first[b], bin_first[b + 1])
    Py_ssize_t* y_first            # PH + 1, the same for the y axis samples
    Py_ssize_t* x_first            # PW + 1
    double* y_inside               # PH: grid samples of row ph inside the map (merged or not)
    double* x_inside               # PW
    AxisSample* y_samples
    AxisSample* x_samples
    Py_ssize_t y_capacity          # entries y_samples can hold
    Py_ssize_t x_capacity
    Py_ssize_t* corner_offsets     # 4 per sample: element offsets of the 4 bilinear taps
    void* corner_weights           # 4 per sample, of type T
    Py_ssize_t sample_capacity


cdef inline bint table_init(SampleTable* table, Py_ssize_t pooled_h, Py_ssize_t pooled_w) noexcept nogil:
    """Allocate the per-bin index arrays of an empty table; False when out of memory.

    table_free releases what it allocated, also after a failure.
    """
    # The per-bin arrays share one allocation (y_inside owns it): one malloc per thread.
    cdef size_t n_index = (pooled_h * pooled_w + 1) + (pooled_h + 1) + (pooled_w + 1)
    table.n_bins = pooled_h * pooled_w
    table.pooled_w = pooled_w
    table.y_inside = <double*>malloc((pooled_h + pooled_w) * sizeof(double)
                                     + n_index * sizeof(Py_ssize_t))
    table.y_samples = NULL
    table.x_samples = NULL
    table.y_capacity = 0
    table.x_capacity = 0
    table.corner_offsets = NULL
    table.corner_weights = NULL
    table.sample_capacity = 0
    if table.y_inside == NULL:
        return False
    table.x_inside = table.y_inside + pooled_h
    table.bin_first = <Py_ssize_t*>(table.x_inside + pooled_w)
    table.y_first = table.bin_first + table.n_bins + 1
    table.x_first = table.y_first + pooled_h + 1
    return True


cdef inline void table_free(SampleTable* table) noexcept nogil:
    """Release everything table_init and the reserve helpers allocated."""
    free(table.y_inside)
    free(table.y_samples)
    free(table.x_samples)
    free(table.corner_offsets)
    free(table.corner_weights)


cdef inline bint grow(void** buffer, Py_ssize_t n_items, size_t item_size) noexcept nogil:
    """realloc that keeps the old buffer on failure; False when out of memory or too big."""
    cdef void* bigger
    if n_items < 0 or <size_t>n_items > PY_SSIZE_T_MAX // item_size:
        return False
    bigger = realloc(buffer[0], <size_t>n_items * item_size)
    if bigger == NULL:
        return False
    buffer[0] = bigger
    return True


cdef inline bint reserve_samples(SampleTable* table, Py_ssize_t n, size_t weight_size) noexcept nogil:
    """Make room for n samples (4 offsets + 4 weights each)."""
    if n <= table.sample_capacity:
        return True
    if n > PY_SSIZE_T_MAX // 4:
        return False
    if not (grow(<void**>&table.corner_offsets, 4 * n, sizeof(Py_ssize_t))
            and grow(&table.corner_weights, 4 * n, weight_size)):
        return False
    table.sample_capacity = n
    return True


cdef inline RoIGrid roi_grid(const floating* box, floating spatial_scale, bint aligned,
                             Py_ssize_t pooled_h, Py_ssize_t pooled_w,
                             Py_ssize_t sampling_ratio) noexcept nogil:
    """torchvision's RoI geometry for box = (x1, y1, x2, y2), in type T."""
    cdef RoIGrid g
    cdef floating offset = <floating>0.5 if aligned else <floating>0.0
    cdef floating start_x = box[0] * spatial_scale - offset
    cdef floating start_y = box[1] * spatial_scale - offset
    cdef floating roi_w = (box[2] * spatial_scale - offset) - start_x
    cdef floating roi_h = (box[3] * spatial_scale - offset) - start_y
    if not aligned:  # legacy mode: malformed RoIs are forced to 1x1
        roi_w = roi_w if roi_w > 1 else <floating>1.0
        roi_h = roi_h if roi_h > 1 else <floating>1.0
    g.start_x = start_x
    g.start_y = start_y
    g.bin_w = roi_w / <floating>pooled_w
    g.bin_h = roi_h / <floating>pooled_h
    if sampling_ratio > 0:
        g.grid_h = sampling_ratio
        g.grid_w = sampling_ratio
    else:  # adaptive; an inverted aligned box gets an empty grid, as in torchvision
        g.grid_h = fmax(ceil(<double>(roi_h / <floating>pooled_h)), 0.0)
        g.grid_w = fmax(ceil(<double>(roi_w / <floating>pooled_w)), 0.0)
    g.count = <double><floating>fmax(g.grid_h * g.grid_w, 1.0)
    return g


cdef inline floating sample_coordinate(floating start, floating bin_size, Py_ssize_t p,
                                       double i, double grid) noexcept nogil:
    """Coordinate of sample i of bin p, evaluated exactly as torchvision does.

    Including torchvision's `iy + .5f`: the sample index goes through float32 even when T is
    double (it only matters past 2**24 samples per bin).
    """
    return start + <floating>p * bin_size + <floating>(<float>i + <float>0.5) * bin_size / <floating>grid


cdef inline bint inside(floating y, Py_ssize_t size) noexcept nogil:
    """torchvision's range test, written so that NaN is outside."""
    return y >= -1 and y <= size


cdef inline bint passed(floating y, floating bound, bint rising, bint strict) noexcept nogil:
    """Whether a coordinate moving up (rising) or down has reached (or, strict, crossed) bound."""
    if rising:
        return y > bound if strict else y >= bound
    return y < bound if strict else y <= bound


cdef inline double first_passing(floating start, floating bin_size, Py_ssize_t p, double grid,
                                 double lo, double hi, floating bound, bint rising,
                                 bint strict) noexcept nogil:
    """Smallest sample index in [lo, hi) of bin p whose coordinate has passed `bound`, else hi.

    Bisection over the monotone coordinates; the step cap only matters for indices past
    2**53, where doubles stop being consecutive.
    """
    cdef double mid
    cdef int steps = 0
    while lo < hi and steps < 2200:
        mid = lo + floor((hi - lo) * 0.5)
        if passed(sample_coordinate(start, bin_size, p, mid, grid), bound, rising, strict):
            hi = mid
        else:
            lo = mid + 1.0
        steps += 1
    return lo


cdef inline double coordinate_run_end(floating start, floating bin_size, Py_ssize_t p,
                                      double grid, double i, double end,
                                      floating y) noexcept nogil:
    """End of the run of samples from i on (before `end`) whose coordinate is y: the float
    type, or torchvision's float32 sample index, rounds a huge bin's neighbouring samples to
    one value. Bisection, so a run costs the same whatever its length."""
    cdef double following = i + 1.0
    if following <= i:  # past 2**53, where i + 1 == i: the rest is one run
        return end
    if following < end and sample_coordinate(start, bin_size, p, following, grid) == y:
        return first_passing(start, bin_size, p, grid, following, end, y, bin_size >= 0, True)
    return following


cdef inline bint push_sample(AxisSample** samples, Py_ssize_t* capacity, Py_ssize_t n,
                             floating y, Py_ssize_t size, Py_ssize_t stride,
                             double repeats) noexcept nogil:
    """Store sample n at coordinate y (inside [-1, size]), clamped as torchvision does."""
    cdef Py_ssize_t low
    cdef floating frac
    cdef AxisSample* sample
    if n >= capacity[0]:
        if not grow(<void**>samples, 2 * n + 64, sizeof(AxisSample)):
            return False
        capacity[0] = 2 * n + 64
    sample = &samples[0][n]
    if y <= 0:
        y = 0
    low = <Py_ssize_t>y
    if low >= size - 1:
        low = size - 1
        frac = 0
        sample.high = low * stride
    else:
        frac = y - <floating>low
        sample.high = (low + 1) * stride
    sample.low = low * stride
    sample.frac_high = frac
    sample.frac_low = <floating>1.0 - frac
    sample.repeats = repeats
    return True


cdef inline bint push_cell(AxisSample** samples, Py_ssize_t* capacity, Py_ssize_t n,
                           double n_cell, floating y_first, floating y_last, Py_ssize_t size,
                           Py_ssize_t stride) noexcept nogil:
    """Store the n_cell inside samples of one pixel cell, y_first to y_last, as one entry
    holding the sums of their weights (a merged grid: see the top of this file)."""
    cdef AxisSample* sample
    cdef double row, frac_sum
    if not push_sample(samples, capacity, n, y_first, size, stride, 1.0):
        return False
    sample = &samples[0][n]
    if sample.low == sample.high or y_first <= 0:  # a clamped cell: all weight on one row
        sample.frac_low, sample.frac_high = n_cell, 0.0
        return True
    # The coordinates are an arithmetic run, so their mean is the mean of the two ends.
    row = <double>(sample.low // stride)
    frac_sum = n_cell * ((<double>y_first + <double>y_last) * 0.5 - row)
    sample.frac_low, sample.frac_high = n_cell - frac_sum, frac_sum
    return True


cdef inline double cell_end(floating start, floating bin_size, Py_ssize_t p, double grid,
                            double i, double end, floating y, Py_ssize_t size,
                            bint rising) noexcept nogil:
    """The first sample index in (i, end) of bin p that leaves the pixel cell of sample i
    (at coordinate y), else end. Cells: [-1, 0] (clamped to row 0), [r, r + 1) for
    r < size - 1, and [size - 1, size] (clamped to the last row)."""
    cdef floating r
    if y <= 0:
        return first_passing(start, bin_size, p, grid, i + 1, end, 0, True, True) if rising else end
    if y >= size - 1:
        if rising:
            return end
        return first_passing(start, bin_size, p, grid, i + 1, end, <floating>(size - 1), False, True)
    r = floor(y)
    if rising:
        return first_passing(start, bin_size, p, grid, i + 1, end, r + 1, True, False)
    return first_passing(start, bin_size, p, grid, i + 1, end, r, False, True)


cdef inline bint fill_axis(floating start, floating bin_size, Py_ssize_t n_bins, double grid,
                           Py_ssize_t size, Py_ssize_t stride, Py_ssize_t* bin_first,
                           double* n_inside, AxisSample** samples, Py_ssize_t* capacity,
                           bint merge, bint for_max) noexcept nogil:
    """Store the samples of one axis inside [-1, size], bin by bin, in order, and how many
    grid samples of each bin are inside (n_inside).

    merge: one entry per pixel cell (two, its first and last sample, for_max) instead of one
    per sample. False when out of memory.
    """
    cdef Py_ssize_t p, repeat, kept = 0
    cdef double i, end, run_end
    cdef floating y
    cdef bint rising = bin_size >= 0
    cdef floating low_bound = -1
    cdef floating high_bound = <floating>size
    for p in range(n_bins):
        bin_first[p] = kept
        if grid <= SMALL_GRID and not merge:  # torchvision's loop itself
            i = 0.0
            while i < grid:
                y = sample_coordinate(start, bin_size, p, i, grid)
                i += 1.0
                if inside(y, size):
                    if not push_sample(samples, capacity, kept, y, size, stride, 1.0):
                        return False
                    kept += 1
            n_inside[p] = kept - bin_first[p]
            continue
        if rising:
            i = first_passing(start, bin_size, p, grid, 0.0, grid, low_bound, True, False)
            end = first_passing(start, bin_size, p, grid, i, grid, high_bound, True, True)
        else:
            i = first_passing(start, bin_size, p, grid, 0.0, grid, high_bound, False, False)
            end = first_passing(start, bin_size, p, grid, i, grid, low_bound, False, True)
        n_inside[p] = end - i if end > i else 0.0
        while merge and i < end:
            y = sample_coordinate(start, bin_size, p, i, grid)
            run_end = cell_end(start, bin_size, p, grid, i, end, y, size, rising)
            if run_end <= i:  # past 2**53, where i + 1 == i: the rest is one cell
                run_end = end
            if not for_max:
                if not push_cell(samples, capacity, kept, run_end - i, y,
                                 sample_coordinate(start, bin_size, p, run_end - 1, grid),
                                 size, stride):
                    return False
                kept += 1
            else:  # the cell's first and last sample: one of them is the first maximum
                if not push_sample(samples, capacity, kept, y, size, stride, 1.0):
                    return False
                kept += 1
                if run_end - i > 1:
                    if not push_sample(samples, capacity, kept,
                                       sample_coordinate(start, bin_size, p, run_end - 1, grid),
                                       size, stride, 1.0):
                        return False
                    kept += 1
            i = run_end
        while i < end:  # not merged: sample by sample, equal coordinates counted
            y = sample_coordinate(start, bin_size, p, i, grid)
            run_end = coordinate_run_end(start, bin_size, p, grid, i, end, y)
            if not inside(y, size):
                i = run_end
                continue
            if run_end - i > LONGEST_UNMERGED_RUN:
                if not push_sample(samples, capacity, kept, y, size, stride, run_end - i):
                    return False
                kept += 1
            else:  # counted, not stepped: past 2**53, i + 1 == i
                for repeat in range(<Py_ssize_t>(run_end - i)):
                    if not push_sample(samples, capacity, kept, y, size, stride, 1.0):
                        return False
                    kept += 1
            i = run_end
    bin_first[n_bins] = kept
    return True


cdef inline bint build_axis_tables(SampleTable* table, const floating* box,
                                   floating spatial_scale, bint aligned,
                                   Py_ssize_t pooled_h, Py_ssize_t pooled_w,
                                   Py_ssize_t sampling_ratio,
                                   Py_ssize_t height, Py_ssize_t width,
                                   Py_ssize_t row_stride, Py_ssize_t col_stride,
                                   bint for_max, RoIGrid* grid) noexcept nogil:
    """Store one RoI's inside samples along y and along x (table.y_*, table.x_*).

    A sample of bin (ph, pw) is a pair (iy, ix), iy in [y_first[ph], y_first[ph + 1]) and
    ix in [x_first[pw], x_first[pw + 1]); sample_taps gives its 4 taps. This is all the
    channels-last kernels need: O(PH * grid_h + PW * grid_w) work per RoI, and with a grid
    finer than the map, O(PH + PW + the cells the bins cover) (merged, see the top).
    False when out of memory.
    """
    cdef bint merge
    grid[0] = roi_grid(box, spatial_scale, aligned, pooled_h, pooled_w, sampling_ratio)
    merge = grid.grid_h * grid.grid_w * pooled_h * pooled_w >= MERGE_SAMPLES
    return (fill_axis(<floating>grid.start_y, <floating>grid.bin_h, pooled_h, grid.grid_h,
                      height, row_stride, table.y_first, table.y_inside, &table.y_samples,
                      &table.y_capacity, merge or pooled_h * grid.grid_h >= MERGE_AXIS,
                      for_max)
            and fill_axis(<floating>grid.start_x, <floating>grid.bin_w, pooled_w,
                          grid.grid_w, width, col_stride, table.x_first, table.x_inside,
                          &table.x_samples, &table.x_capacity,
                          merge or pooled_w * grid.grid_w >= MERGE_AXIS, for_max))


cdef inline double inside_samples(const SampleTable* table, Py_ssize_t b) noexcept nogil:
    """Grid samples of bin b (row-major) inside the map (the others are 0s that take part)."""
    return table.y_inside[b // table.pooled_w] * table.x_inside[b % table.pooled_w]


cdef inline void sample_taps(const AxisSample* ys, const AxisSample* xs, bint for_max,
                             Py_ssize_t* offsets, floating* weights) noexcept nogil:
    """The 4 tap offsets and weights of the sample at (ys, xs), as torchvision forms them.

    A sample standing for several equal coordinates has its weights multiplied by that
    count for a sum, not for a max (for_max).
    """
    cdef floating hy = <floating>ys.frac_low
    cdef floating ly = <floating>ys.frac_high
    cdef floating hx = <floating>xs.frac_low
    cdef floating lx = <floating>xs.frac_high
    cdef floating repeats
    offsets[0] = ys.low + xs.low
    offsets[1] = ys.low + xs.high
    offsets[2] = ys.high + xs.low
    offsets[3] = ys.high + xs.high
    weights[0] = hy * hx
    weights[1] = hy * lx
    weights[2] = ly * hx
    weights[3] = ly * lx
    if not for_max and (ys.repeats != 1 or xs.repeats != 1):
        repeats = <floating>(ys.repeats * xs.repeats)
        weights[0] *= repeats
        weights[1] *= repeats
        weights[2] *= repeats
        weights[3] *= repeats


cdef inline bint fits_sample_table(const SampleTable* table, Py_ssize_t pooled_h,
                                   Py_ssize_t pooled_w) noexcept nogil:
    """Whether the RoI's samples (axis tables built) fit a per-sample table (TABLE_SAMPLES)."""
    return table.y_first[pooled_h] * table.x_first[pooled_w] <= TABLE_SAMPLES


cdef inline bint build_sample_table(SampleTable* table, Py_ssize_t pooled_h,
                                    Py_ssize_t pooled_w, bint for_max,
                                    const floating* type_tag) noexcept nogil:
    """From the RoI's axis tables, the 4 tap offsets and 4 weights of every inside sample of
    every bin (the caller checked fits_sample_table).

    Samples are stored bin by bin (row-major), and within a bin in torchvision's order
    (iy outer, ix inner). For kernels that read every sample once per channel plane; the
    channels-last ones walk the axis tables instead. False when out of memory.
    """
    cdef Py_ssize_t ph, pw, iy, ix, s
    cdef floating* weights
    if not reserve_samples(table, table.y_first[pooled_h] * table.x_first[pooled_w],
                           sizeof(floating)):
        return False
    weights = <floating*>table.corner_weights
    s = 0
    for ph in range(pooled_h):
        for pw in range(pooled_w):
            table.bin_first[ph * pooled_w + pw] = s
            for iy in range(table.y_first[ph], table.y_first[ph + 1]):
                for ix in range(table.x_first[pw], table.x_first[pw + 1]):
                    sample_taps(&table.y_samples[iy], &table.x_samples[ix], for_max,
                                &table.corner_offsets[4 * s], &weights[4 * s])
                    s += 1
    table.bin_first[table.n_bins] = s
    return True


cdef inline floating four_taps(const floating* image, const Py_ssize_t* offsets,
                               const floating* weights) noexcept nogil:
    """The bilinear value of one sample: torchvision's w1*v1 + w2*v2 + w3*v3 + w4*v4."""
    return (weights[0] * image[offsets[0]] + weights[1] * image[offsets[1]]
            + weights[2] * image[offsets[2]] + weights[3] * image[offsets[3]])
