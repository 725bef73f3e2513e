"""A slow, loop-based NumPy RoIAlign written straight from SEMANTICS.md, to test against.

Independent of the package: plain Python loops over RoIs, bins and samples, float64 math.
Only the box coordinates and the scale are first rounded to the features' dtype, because the
package (like torchvision) does that before computing anything.
"""

import math

import numpy as np

# torchvision's RoIPool starts each bin's maximum from -FLT_MAX.
FLT_MAX = float(np.finfo(np.float32).max)


def bilinear_taps(height, width, y, x):
    """The 4 (row, col, weight) taps of torchvision's bilinear sample at (y, x), None outside."""
    if not (-1 <= y <= height and -1 <= x <= width):  # "not inside", so NaN lands here too
        return None
    y, x = max(y, 0.0), max(x, 0.0)
    y_low, x_low = math.floor(y), math.floor(x)
    if y_low >= height - 1:
        y_low = y_high = height - 1
        y = float(y_low)
    else:
        y_high = y_low + 1
    if x_low >= width - 1:
        x_low = x_high = width - 1
        x = float(x_low)
    else:
        x_high = x_low + 1
    ly, lx = y - y_low, x - x_low
    hy, hx = 1 - ly, 1 - lx
    return [(y_low, x_low, hy * hx), (y_low, x_high, hy * lx),
            (y_high, x_low, ly * hx), (y_high, x_high, ly * lx)]


def bilinear(plane, y, x):
    """Bilinear value of every channel of plane (C, H, W) at (y, x); 0 outside [-1,H]x[-1,W]."""
    taps = bilinear_taps(plane.shape[1], plane.shape[2], y, x)
    if taps is None:
        return np.zeros(plane.shape[0])
    return sum(w * plane[:, r, c] for r, c, w in taps)


def reference_roi_align(features_nchw, boxes_k5, output_size, spatial_scale=1.0,
                        sampling_ratio=-1, aligned=False, mode="avg"):
    """RoIAlign of (N, C, H, W) features over (K, 5) boxes; returns float64 (K, C, PH, PW)."""
    features = np.asarray(features_nchw)
    pooled_h, pooled_w = (output_size, output_size) if np.isscalar(output_size) else output_size
    boxes = np.asarray(boxes_k5).astype(features.dtype).astype(np.float64)
    scale = float(features.dtype.type(spatial_scale))
    planes = features.astype(np.float64)
    out = np.zeros((len(boxes), features.shape[1], pooled_h, pooled_w))
    offset = 0.5 if aligned else 0.0
    for k, (batch_index, x1, y1, x2, y2) in enumerate(boxes):
        plane = planes[int(batch_index)]
        start_x, start_y = x1 * scale - offset, y1 * scale - offset
        roi_w, roi_h = (x2 * scale - offset) - start_x, (y2 * scale - offset) - start_y
        if not aligned:  # legacy mode: boxes smaller than 1x1 become 1x1
            roi_w, roi_h = max(roi_w, 1.0), max(roi_h, 1.0)
        bin_w, bin_h = roi_w / pooled_w, roi_h / pooled_h
        grid_h = sampling_ratio if sampling_ratio > 0 else math.ceil(roi_h / pooled_h)
        grid_w = sampling_ratio if sampling_ratio > 0 else math.ceil(roi_w / pooled_w)
        count = max(grid_h * grid_w, 1)
        for ph in range(pooled_h):
            for pw in range(pooled_w):
                values = []
                for iy in range(grid_h):  # a negative grid is an empty range
                    y = start_y + ph * bin_h + (iy + 0.5) * bin_h / grid_h
                    for ix in range(grid_w):
                        x = start_x + pw * bin_w + (ix + 0.5) * bin_w / grid_w
                        values.append(bilinear(plane, y, x))
                if not values:
                    continue  # empty grid: 0 in both modes
                if mode == "avg":
                    out[k, :, ph, pw] = np.sum(values, axis=0) / count
                else:  # np.max lets a NaN sample win, as NaN should
                    out[k, :, ph, pw] = np.max(values, axis=0)
    return out


def sample_grid(box, spatial_scale, output_size, sampling_ratio, aligned, height, width):
    """Per bin (ph, pw), the bin's samples in (iy, ix) order, each a list of 4 bilinear taps
    (row, col, weight), or None for a sample outside [-1, H] x [-1, W]; and the divisor count.

    Written from SEMANTICS.md in float64, independently of the package.
    """
    pooled_h, pooled_w = output_size
    x1, y1, x2, y2 = (float(v) for v in box)
    offset = 0.5 if aligned else 0.0
    start_x, start_y = x1 * spatial_scale - offset, y1 * spatial_scale - offset
    roi_w = (x2 * spatial_scale - offset) - start_x
    roi_h = (y2 * spatial_scale - offset) - start_y
    if not aligned:
        roi_w, roi_h = max(roi_w, 1.0), max(roi_h, 1.0)
    bin_w, bin_h = roi_w / pooled_w, roi_h / pooled_h
    grid_h = sampling_ratio if sampling_ratio > 0 else math.ceil(roi_h / pooled_h)
    grid_w = sampling_ratio if sampling_ratio > 0 else math.ceil(roi_w / pooled_w)
    bins = {}
    for ph in range(pooled_h):
        for pw in range(pooled_w):
            samples = []
            for iy in range(grid_h):
                y = start_y + ph * bin_h + (iy + 0.5) * bin_h / grid_h
                for ix in range(grid_w):
                    x = start_x + pw * bin_w + (ix + 0.5) * bin_w / grid_w
                    samples.append(bilinear_taps(height, width, y, x))
            bins[ph, pw] = samples
    return bins, max(grid_h * grid_w, 1)


def sample_values(plane, taps):
    """Value of one sample on a (C, H, W) plane: the bilinear sum, or 0 outside the map."""
    if taps is None:
        return np.zeros(plane.shape[0])
    return sum(w * plane[:, r, c] for r, c, w in taps)


def reference_roi_align_backward(features, boxes, grad_output, output_size, spatial_scale,
                       sampling_ratio, aligned, mode):
    """Loop reference of the gradient w.r.t. (N, C, H, W) features, in float64.

    avg: each inside sample sends grad * w / count to its taps. max: the first maximum
    sample (in (iy, ix) order, outside samples being 0) sends grad * w to its taps; nothing
    when that sample is outside.
    """
    features = np.asarray(features, dtype=np.float64)
    _, channels, height, width = features.shape
    grad_input = np.zeros_like(features)
    for k, (batch_index, *box) in enumerate(np.asarray(boxes, dtype=np.float64)):
        b = int(batch_index)
        bins, count = sample_grid(box, spatial_scale, output_size, sampling_ratio, aligned,
                                  height, width)
        for (ph, pw), samples in bins.items():
            grad = grad_output[k, :, ph, pw].astype(np.float64)
            if mode == "avg":
                for taps in filter(None, samples):
                    for r, c, w in taps:
                        grad_input[b, :, r, c] += grad * w / count
                continue
            if not samples:
                continue
            values = np.array([sample_values(features[b], taps) for taps in samples])
            for ch in range(channels):
                taps = samples[int(np.argmax(values[:, ch]))]  # argmax: the first maximum
                for r, c, w in taps or []:
                    grad_input[b, ch, r, c] += grad[ch] * w
    return grad_input


def _axis_samples(start, bin_size, n_bins, grid, size, t):
    """Per bin, the sample coordinates along one axis in type t, and their clamped taps.

    Returns (inside, low, high, frac) arrays of shape (n_bins, grid); coordinates are
    evaluated in t in torchvision's order: start + p * bin + (i + 0.5) * bin / grid.
    """
    p = np.arange(n_bins, dtype=t)[:, None]
    i = np.arange(grid, dtype=t)[None, :]
    with np.errstate(all="ignore"):
        coord = (start + p * bin_size) + ((i + t(0.5)) * bin_size) / t(grid)
    inside = (coord >= -1) & (coord <= size)
    coord = np.where(inside, np.maximum(coord, t(0)), t(0))
    low = np.floor(coord).astype(np.int64)
    at_end = low >= size - 1
    low = np.where(at_end, size - 1, low)
    high = np.where(at_end, size - 1, low + 1)
    frac = np.where(at_end, t(0), coord - low.astype(t)).astype(t)
    return inside, low, high, frac


def reference_roi_align_in_dtype(features, boxes, output_size, spatial_scale, sampling_ratio,
                           aligned, mode):
    """RoIAlign of (N, C, H, W) `features` with the RoI geometry evaluated in their dtype.

    Same semantics as tests/reference.py (SEMANTICS.md), but every coordinate is computed in
    the compute type (float32 for float32/float16 maps), as the package and torchvision do, so
    a sample sitting exactly on a border or a grid size exactly at an integer is decided the
    same way. Values are accumulated in float64. Vectorized: cheap for long boxes too.
    """
    t = features.dtype.type
    ph_n, pw_n = output_size
    n_rois = len(boxes)
    _, channels, height, width = features.shape
    coords = np.asarray(boxes)[:, 1:].astype(t)
    scale, offset = t(spatial_scale), t(0.5) if aligned else t(0)
    planes = features.astype(np.float64)
    out = np.zeros((n_rois, channels, ph_n, pw_n))
    for k in range(n_rois):
        plane = planes[int(boxes[k][0])]
        x1, y1, x2, y2 = coords[k]
        with np.errstate(all="ignore"):
            start_x, start_y = x1 * scale - offset, y1 * scale - offset
            roi_w, roi_h = (x2 * scale - offset) - start_x, (y2 * scale - offset) - start_y
            if not aligned:
                roi_w, roi_h = max(roi_w, t(1)), max(roi_h, t(1))
            bin_w, bin_h = roi_w / t(pw_n), roi_h / t(ph_n)
        if sampling_ratio > 0:
            grid_h = grid_w = sampling_ratio
        else:
            grid_h = max(math.ceil(float(roi_h / t(ph_n))), 0)
            grid_w = max(math.ceil(float(roi_w / t(pw_n))), 0)
        count = float(t(max(grid_h * grid_w, 1)))
        if grid_h == 0 or grid_w == 0:
            continue  # empty grid: 0 in both modes
        y_in, y_lo, y_hi, ly = _axis_samples(start_y, bin_h, ph_n, grid_h, height, t)
        x_in, x_lo, x_hi, lx = _axis_samples(start_x, bin_w, pw_n, grid_w, width, t)
        hy, hx = (t(1) - ly).astype(t), (t(1) - lx).astype(t)
        for ph in range(ph_n):
            for pw in range(pw_n):
                yl, yh = y_lo[ph][:, None], y_hi[ph][:, None]
                xl, xh = x_lo[pw][None, :], x_hi[pw][None, :]
                w1 = (hy[ph][:, None] * hx[pw][None, :]).astype(np.float64)
                w2 = (hy[ph][:, None] * lx[pw][None, :]).astype(np.float64)
                w3 = (ly[ph][:, None] * hx[pw][None, :]).astype(np.float64)
                w4 = (ly[ph][:, None] * lx[pw][None, :]).astype(np.float64)
                values = (w1 * plane[:, yl, xl] + w2 * plane[:, yl, xh]
                          + w3 * plane[:, yh, xl] + w4 * plane[:, yh, xh])
                values = np.where(y_in[ph][:, None] & x_in[pw][None, :], values, 0.0)
                if mode == "avg":
                    out[k, :, ph, pw] = values.sum(axis=(1, 2)) / count
                else:
                    out[k, :, ph, pw] = values.max(axis=(1, 2))
    return out


def round_half_away(value):
    """C's round(): halves go away from zero (np.round would go to the even neighbour)."""
    magnitude = math.floor(abs(value))
    if abs(value) - magnitude >= 0.5:  # exact in binary floating point
        magnitude += 1
    return int(math.copysign(magnitude, value))


def quantized_bins(first, last, spatial_scale, n_bins, size, dtype):
    """torchvision's [start, end) pixel range of every bin along one axis, clipped to [0, size].

    The products with spatial_scale and the bin size are rounded to `dtype` as torchvision
    computes them in the features' type.
    """
    start = round_half_away(float(dtype(first) * dtype(spatial_scale)))
    end = round_half_away(float(dtype(last) * dtype(spatial_scale)))
    length = max(end - start + 1, 1)
    bin_size = dtype(length) / dtype(n_bins)
    ranges = []
    for p in range(n_bins):
        low = math.floor(float(dtype(p) * bin_size)) + start
        high = math.ceil(float(dtype(p + 1) * bin_size)) + start
        ranges.append((min(max(low, 0), size), min(max(high, 0), size)))
    return ranges


def reference_roi_pool(features, boxes, output_size, spatial_scale=1.0, grad_output=None):
    """Loop RoIPool of (N, C, H, W) features over (K, 5) boxes.

    Returns the pooled (K, C, PH, PW) array, and with grad_output also the gradient w.r.t.
    the features (float64): each bin's gradient to its first strict maximum, started from
    -FLT_MAX as torchvision does; an empty bin is 0 and takes no gradient.
    """
    dtype = features.dtype.type
    pooled_h, pooled_w = output_size
    _, channels, height, width = features.shape
    boxes = np.asarray(boxes).astype(dtype)
    out = np.zeros((len(boxes), channels, pooled_h, pooled_w), dtype=dtype)
    grad_input = np.zeros(features.shape)
    for k, (batch_index, x1, y1, x2, y2) in enumerate(boxes):
        b = int(batch_index)
        rows = quantized_bins(y1, y2, spatial_scale, pooled_h, height, dtype)
        cols = quantized_bins(x1, x2, spatial_scale, pooled_w, width, dtype)
        for ph, (y_lo, y_hi) in enumerate(rows):
            for pw, (x_lo, x_hi) in enumerate(cols):
                if y_hi <= y_lo or x_hi <= x_lo:
                    continue  # empty bin: 0, no gradient
                for c in range(channels):
                    best, where = -FLT_MAX, None
                    for y in range(y_lo, y_hi):
                        for x in range(x_lo, x_hi):
                            if features[b, c, y, x] > best:
                                best, where = features[b, c, y, x], (y, x)
                    out[k, c, ph, pw] = best
                    if grad_output is not None and where is not None:
                        grad_input[b, c][where] += grad_output[k, c, ph, pw]
    return out if grad_output is None else (out, grad_input)


# ---- Multi-level (FPN) pooling -------------------------------------------------------------


def reference_level(box, k_min, k_max, canonical_scale, canonical_level, rule, dtype):
    """One box's level index by each framework's formula (SEMANTICS.md), one scalar
    operation at a time in `dtype` (the boxes' float type, as the frameworks' torch ops);
    None for a negative area, whose NaN level no framework pools."""
    t = np.dtype(dtype).type
    x1, y1, x2, y2 = (t(v) for v in box)
    area = (x2 - x1) * (y2 - y1)
    if area < 0:
        return None
    with np.errstate(divide="ignore"):
        size = np.sqrt(area)
        if rule == "torchvision":  # LevelMapper: floor(lvl0 + log2(s / s0) + eps)
            level = math.floor((t(canonical_level) + np.log2(size / t(canonical_scale)))
                               + t(1e-6)) if size > 0 else -math.inf
            return min(max(level, k_min), k_max) - k_min
        if rule == "detectron2":  # assign_boxes_to_levels: floor(lvl0 + log2(s / s0 + 1e-8))
            level = math.floor(t(canonical_level) + np.log2(size / t(canonical_scale) + t(1e-8)))
            return min(max(level, k_min), k_max) - k_min
        # mmdet map_roi_levels: floor(log2(s / finest_scale + 1e-6)), clamped to [0, L - 1]
        level = math.floor(np.log2(size / t(canonical_scale) + t(1e-6)))
        return min(max(level, 0), k_max - k_min)


def reference_infer_scales(heights, image_sizes):
    """torchvision's _setup_scales: 2 ** round(log2(h / max image height)), float32."""
    max_h = max(h for h, _ in image_sizes)
    return [2.0 ** float(np.round(np.log2(np.float32(h / max_h)))) for h in heights]


def reference_multiscale_roi_align(levels, boxes, output_size, scales, sampling_ratio,
                                   level_of, aligned=False):
    """Multi-level RoIAlign of (N, C, H_l, W_l) levels: box k pooled from levels[level_of[k]]
    by the single-map loop reference (float64), 0 for a box without a level (None)."""
    channels = levels[0].shape[1]
    out = np.zeros((len(boxes), channels) + tuple(output_size))
    for k, level in enumerate(level_of):
        if level is None or level >= len(levels):
            continue
        out[k] = reference_roi_align_in_dtype(levels[level], boxes[k:k + 1], output_size,
                                              scales[level], sampling_ratio, aligned, "avg")[0]
    return out
# ---- Position-sensitive pooling (R-FCN): SEMANTICS.md "Position-sensitive RoIAlign / RoIPool" --


def ps_channel(c_out, ph, pw, output_size):
    """The input channel output bin (c_out, ph, pw) reads: (c_out * PH + ph) * PW + pw."""
    pooled_h, pooled_w = output_size
    return (c_out * pooled_h + ph) * pooled_w + pw


def reference_ps_roi_align(features, boxes, output_size, spatial_scale=1.0, sampling_ratio=-1,
                           grad_output=None):
    """Loop position-sensitive RoIAlign of (N, C, H, W) features over (K, 5) boxes, float64.

    Geometry as roi_align with aligned=True (offset 0.5, no 1x1 clamp), average over the
    bin's grid; an empty grid gives 0. Returns (K, C / (PH * PW), PH, PW), and with
    grad_output also the gradient w.r.t. the features (the adjoint: each inside sample sends
    grad * w / count to its taps in the bin's own channel).
    """
    features = np.asarray(features)
    pooled_h, pooled_w = output_size
    n_images, channels, height, width = features.shape
    c_out = channels // (pooled_h * pooled_w)
    rows = np.asarray(boxes).astype(features.dtype).astype(np.float64)
    scale = float(features.dtype.type(spatial_scale))
    planes = features.astype(np.float64)
    out = np.zeros((len(rows), c_out, pooled_h, pooled_w))
    grad_input = np.zeros(features.shape)
    for k, (batch_index, *box) in enumerate(rows):
        b = int(batch_index)
        bins, _ = sample_grid(box, scale, output_size, sampling_ratio, True, height, width)
        for (ph, pw), samples in bins.items():
            count = len(samples)  # the grid's size (outside samples are 0s that count)
            if count == 0:
                continue
            for c in range(c_out):
                plane = ps_channel(c, ph, pw, output_size)
                total = 0.0
                for taps in filter(None, samples):
                    total += sum(w * planes[b, plane, r, col] for r, col, w in taps)
                    if grad_output is not None:
                        for r, col, w in taps:
                            grad_input[b, plane, r, col] += grad_output[k, c, ph, pw] * w / count
                out[k, c, ph, pw] = total / count
    return out if grad_output is None else (out, grad_input)


def ps_pool_bins(first, last, spatial_scale, n_bins, size, dtype, clip_to=None, round_in=None):
    """torchvision's ps_roi_pool [start, end) pixel range of every bin along one axis.

    start = round(first * s), end = round(last * s) (products in `dtype`, halves away from
    zero), length = max(end - start, 1), bins [floor(p * bin), ceil((p + 1) * bin)) + start
    clipped to [0, clip_to]; clip_to defaults to size - 1 (the forward's clipping). round_in:
    the type the products are rounded through before round() (torchvision's backward uses
    roundf: float32).
    """
    clip_to = size - 1 if clip_to is None else clip_to
    products = [dtype(first) * dtype(spatial_scale), dtype(last) * dtype(spatial_scale)]
    if round_in is not None:
        products = [round_in(value) for value in products]
    start, end = (round_half_away(float(value)) for value in products)
    length = max(end - start, 1)
    bin_size = dtype(length) / dtype(n_bins)
    ranges = []
    for p in range(n_bins):
        low = math.floor(float(dtype(p) * bin_size)) + start
        high = math.ceil(float(dtype(p + 1) * bin_size)) + start
        ranges.append((min(max(low, 0), clip_to), min(max(high, 0), clip_to)))
    return ranges


def reference_ps_roi_pool(features, boxes, output_size, spatial_scale=1.0, grad_output=None,
                          torchvision_backward=False):
    """Loop position-sensitive RoIPool of (N, C, H, W) features over (K, 5) boxes.

    Each bin is the mean of its (clipped) elements in the bin's own channel, 0 when empty.
    Returns (K, C / (PH * PW), PH, PW) in float64, and with grad_output also the gradient
    w.r.t. the features: the adjoint of that forward (each element of a non-empty bin gets
    grad / count), or with torchvision_backward=True what torchvision's backward computes
    instead (bins clipped to [0, H] and [0, W], products rounded through float32).
    """
    dtype = features.dtype.type
    pooled_h, pooled_w = output_size
    _, channels, height, width = features.shape
    c_out = channels // (pooled_h * pooled_w)
    rows = np.asarray(boxes).astype(dtype)
    planes = features.astype(np.float64)
    out = np.zeros((len(rows), c_out, pooled_h, pooled_w))
    grad_input = np.zeros(features.shape)
    for k, (batch_index, x1, y1, x2, y2) in enumerate(rows):
        b = int(batch_index)
        y_bins = ps_pool_bins(y1, y2, spatial_scale, pooled_h, height, dtype)
        x_bins = ps_pool_bins(x1, x2, spatial_scale, pooled_w, width, dtype)
        if torchvision_backward:
            y_grad = ps_pool_bins(y1, y2, spatial_scale, pooled_h, height, dtype, height,
                                  np.float32)
            x_grad = ps_pool_bins(x1, x2, spatial_scale, pooled_w, width, dtype, width,
                                  np.float32)
        else:
            y_grad, x_grad = y_bins, x_bins
        for ph in range(pooled_h):
            for pw in range(pooled_w):
                for c in range(c_out):
                    plane = ps_channel(c, ph, pw, output_size)
                    (y_lo, y_hi), (x_lo, x_hi) = y_bins[ph], x_bins[pw]
                    if y_hi > y_lo and x_hi > x_lo:
                        out[k, c, ph, pw] = planes[b, plane, y_lo:y_hi, x_lo:x_hi].mean()
                    (y_lo, y_hi), (x_lo, x_hi) = y_grad[ph], x_grad[pw]
                    if grad_output is not None and y_hi > y_lo and x_hi > x_lo:
                        count = (y_hi - y_lo) * (x_hi - x_lo)
                        grad_input[b, plane, y_lo:y_hi, x_lo:x_hi] += grad_output[k, c, ph, pw] / count
    return out if grad_output is None else (out, grad_input)


def reference_roi_align_rotated(features, boxes, output_size, spatial_scale=1.0,
                                sampling_ratio=-1, aligned=True, clockwise=False,
                                degrees=True, dtype=None, grad_output=None):
    """Rotated RoIAlign written from detectron2's ROIAlignRotated (mmcv's with aligned=False,
    clockwise, radians): plain loops over an (N, C, H, W) map and (K, 6) boxes
    [batch_index, cx, cy, w, h, angle].

    dtype: the float type every step is rounded to, in detectron2's order (None: float64).
    With grad_output (K, C, PH, PW) it returns the gradient w.r.t. the features instead.
    """
    T = np.dtype(np.float64 if dtype is None else dtype).type
    features = np.asarray(features)
    _, channels, height, width = features.shape
    ph_n, pw_n = (output_size, output_size) if np.isscalar(output_size) else output_size
    scale = T(spatial_scale)
    result = (np.zeros((len(boxes), channels, ph_n, pw_n)) if grad_output is None
              else np.zeros(features.shape))
    for k, row in enumerate(np.asarray(boxes, dtype=np.float64)):
        b = int(row[0])
        cx, cy, w, h, angle = (T(v) for v in row[1:])
        offset = T(0.5) if aligned else T(0.0)
        center_w = T(cx * scale - offset)
        center_h = T(cy * scale - offset)
        roi_w, roi_h = T(w * scale), T(h * scale)
        theta = T(float(angle) * math.pi / 180.0) if degrees else angle
        theta = -theta if clockwise else theta
        cos_t, sin_t = T(math.cos(float(theta))), T(math.sin(float(theta)))
        if not aligned:
            roi_w, roi_h = max(roi_w, T(1)), max(roi_h, T(1))
        bin_h, bin_w = T(roi_h / T(ph_n)), T(roi_w / T(pw_n))
        grid_h = sampling_ratio if sampling_ratio > 0 else int(math.ceil(roi_h / T(ph_n)))
        grid_w = sampling_ratio if sampling_ratio > 0 else int(math.ceil(roi_w / T(pw_n)))
        count = T(max(grid_h * grid_w, 1))
        start_h, start_w = T(-float(roi_h) / 2.0), T(-float(roi_w) / 2.0)
        for ph in range(ph_n):
            for pw in range(pw_n):
                taps = []
                for iy in range(grid_h):
                    yy = T(T(start_h + T(ph) * bin_h)
                           + T(T(T(np.float32(iy) + np.float32(0.5)) * bin_h) / T(grid_h)))
                    for ix in range(grid_w):
                        xx = T(T(start_w + T(pw) * bin_w)
                               + T(T(T(np.float32(ix) + np.float32(0.5)) * bin_w) / T(grid_w)))
                        y = T(T(T(yy * cos_t) - T(xx * sin_t)) + center_h)
                        x = T(T(T(yy * sin_t) + T(xx * cos_t)) + center_w)
                        if not (-1 <= y <= height and -1 <= x <= width):
                            continue
                        y, x = max(y, T(0)), max(x, T(0))
                        y_low, x_low = int(y), int(x)
                        if y_low >= height - 1:
                            y_high = y_low = height - 1
                            y = T(y_low)
                        else:
                            y_high = y_low + 1
                        if x_low >= width - 1:
                            x_high = x_low = width - 1
                            x = T(x_low)
                        else:
                            x_high = x_low + 1
                        ly, lx = T(y - T(y_low)), T(x - T(x_low))
                        hy, hx = T(1.0 - float(ly)), T(1.0 - float(lx))
                        taps.append(((y_low, x_low, T(hy * hx)), (y_low, x_high, T(hy * lx)),
                                     (y_high, x_low, T(ly * hx)), (y_high, x_high, T(ly * lx))))
                for c in range(channels):
                    if grad_output is not None:
                        g = T(grad_output[k, c, ph, pw])
                        back_count = T(grid_h * grid_w)
                        for sample in taps:
                            for yi, xi, wt in sample:
                                result[b, c, yi, xi] = T(result[b, c, yi, xi]
                                                         + T(T(g * wt) / back_count))
                        continue
                    plane = features[b, c]
                    acc = T(0)
                    for sample in taps:
                        value = T(0)
                        for i, (yi, xi, wt) in enumerate(sample):
                            term = T(wt * T(plane[yi, xi]))
                            value = term if i == 0 else T(value + term)
                        acc = T(acc + value)
                    result[k, c, ph, pw] = T(acc / count)
    return result.astype(T)


def _cell_weights(lo, hi):
    """The integrals of (1 - u) and u over [lo, hi] within a unit cell (u in [0, 1])."""
    return (hi - lo) - (hi * hi - lo * lo) / 2, (hi * hi - lo * lo) / 2


def reference_prroi_pool(features, boxes, output_size, spatial_scale=1.0, grad_output=None):
    """Loop Precise RoI Pooling of (N, C, H, W) features over (K, 5) boxes (float64 math).

    Written from the definition, cell by cell: the box's corners are x1 * spatial_scale
    etc., its size max(x2 - x1, 0) split into equal bins; each bin is cut by the unit cells
    [i, i + 1] x [j, j + 1] between pixel centres, and on each piece the bilinear
    interpolant of the cell's four corner pixels (0 outside the map) is integrated in closed
    form; the bin's value is the sum divided by its area, 0 for a zero area. With
    grad_output also returns the gradient w.r.t. the features (each corner pixel's
    coefficient times the bin's grad / area).
    """
    dtype = features.dtype.type
    pooled_h, pooled_w = output_size
    _, channels, height, width = features.shape
    rows = np.asarray(boxes).astype(dtype).astype(np.float64)
    planes = features.astype(np.float64)
    out = np.zeros((len(rows), channels, pooled_h, pooled_w))
    grad_input = np.zeros(features.shape)

    def pixel(i, j):
        return 0 <= i < height and 0 <= j < width

    for k, (batch_index, x1, y1, x2, y2) in enumerate(rows):
        b = int(batch_index)
        x1, y1, x2, y2 = (v * spatial_scale for v in (x1, y1, x2, y2))
        bin_w = max(x2 - x1, 0.0) / pooled_w
        bin_h = max(y2 - y1, 0.0) / pooled_h
        area = bin_w * bin_h
        if area == 0:
            continue
        for ph in range(pooled_h):
            by1 = y1 + bin_h * ph
            by2 = by1 + bin_h
            for pw in range(pooled_w):
                bx1 = x1 + bin_w * pw
                bx2 = bx1 + bin_w
                coeffs = {}  # (i, j) -> integral of the pixel's tent over the bin
                for i in range(math.floor(by1), math.ceil(by2)):
                    if i < -1 or i >= height:  # all four corners outside the map
                        continue
                    wy0, wy1 = _cell_weights(max(by1, i) - i, min(by2, i + 1) - i)
                    for j in range(math.floor(bx1), math.ceil(bx2)):
                        if j < -1 or j >= width:
                            continue
                        wx0, wx1 = _cell_weights(max(bx1, j) - j, min(bx2, j + 1) - j)
                        for (ci, cj), w in (((i, j), wy0 * wx0), ((i, j + 1), wy0 * wx1),
                                            ((i + 1, j), wy1 * wx0), ((i + 1, j + 1), wy1 * wx1)):
                            if pixel(ci, cj):
                                coeffs[ci, cj] = coeffs.get((ci, cj), 0.0) + w
                for c in range(channels):
                    total = sum(w * planes[b, c, ci, cj] for (ci, cj), w in coeffs.items())
                    out[k, c, ph, pw] = total / area
                    if grad_output is not None:
                        g = float(grad_output[k, c, ph, pw]) / area
                        for (ci, cj), w in coeffs.items():
                            grad_input[b, c, ci, cj] += g * w
    return out if grad_output is None else (out, grad_input)
