"""Vectorized NumPy RoIAlign (forward and backward): the legacy-pipeline baseline.

What a NumPy detection pipeline does without a compiled kernel: build every sample's
coordinates for a chunk of RoIs at once, gather the 4 bilinear taps with fancy indexing,
and reduce. Same formula as torchvision / roialign_cy (torchvision's CPU kernel): float32
arithmetic in the same order (each sample is w1*v1 + w2*v2 + w3*v3 + w4*v4, the samples of
a bin are summed iy-major, then divided by the count), so the forward agrees with
roialign_cy bit for bit on the benchmark workloads. Adaptive grids differ from RoI to RoI:
a chunk is padded to its largest grid and the padding samples get weight 0. The backward
scatters grad * w / count with np.add.at (another summation order: equal to float
rounding, not bit for bit).

Work is chunked over RoIs so the gathered taps stay near CHUNK_ELEMENTS floats.
"""

import numpy as np

# Gathered values per chunk (channels x samples); keeps temporaries around 8 MB.
CHUNK_ELEMENTS = 1 << 21


def _roi_grids(coords, spatial_scale, aligned, pooled, sampling_ratio):
    """Per-RoI start, bin size, grid size and count, in the features' float type."""
    dtype = coords.dtype.type
    offset = dtype(0.5 if aligned else 0.0)
    scale = dtype(spatial_scale)
    start_x = coords[:, 0] * scale - offset
    start_y = coords[:, 1] * scale - offset
    roi_w = (coords[:, 2] * scale - offset) - start_x
    roi_h = (coords[:, 3] * scale - offset) - start_y
    if not aligned:  # legacy mode: boxes under 1x1 are stretched to 1x1
        roi_w = np.maximum(roi_w, dtype(1))
        roi_h = np.maximum(roi_h, dtype(1))
    pooled_h, pooled_w = pooled
    bin_h = roi_h / dtype(pooled_h)
    bin_w = roi_w / dtype(pooled_w)
    if sampling_ratio > 0:
        grid_h = np.full(len(coords), sampling_ratio, dtype=np.int64)
        grid_w = grid_h.copy()
    else:
        grid_h = np.maximum(np.ceil(roi_h / dtype(pooled_h)), 0).astype(np.int64)
        grid_w = np.maximum(np.ceil(roi_w / dtype(pooled_w)), 0).astype(np.int64)
    count = np.maximum(grid_h * grid_w, 1).astype(coords.dtype)
    return (start_y, bin_h, grid_h), (start_x, bin_w, grid_w), count


def _axis_taps(start, bin_size, grid, n_bins, size):
    """Low/high tap index and weight of every sample along one axis, shape (k, bins, G).

    G is the chunk's largest grid; samples beyond a RoI's own grid, or outside [-1, size],
    get index 0 and weight 0.
    """
    dtype = start.dtype.type
    g_max = max(int(grid.max()), 1)
    p = np.arange(n_bins, dtype=start.dtype)[None, :, None]
    i = np.arange(g_max, dtype=start.dtype)[None, None, :]
    grid_f = np.maximum(grid, 1).astype(start.dtype)[:, None, None]
    b = bin_size[:, None, None]
    coord = start[:, None, None] + p * b + (i + dtype(0.5)) * b / grid_f
    valid = (coord >= -1) & (coord <= size) & (np.arange(g_max)[None, None, :] < grid[:, None, None])
    coord = np.maximum(coord, dtype(0))
    low = np.floor(coord).astype(np.int64)
    edge = low >= size - 1
    low = np.where(edge, size - 1, low)
    high = np.where(edge, low, low + 1)
    frac = np.where(edge, dtype(0), coord - low.astype(start.dtype))
    w_low = np.where(valid, dtype(1) - frac, dtype(0))
    w_high = np.where(valid, frac, dtype(0))
    low = np.where(valid, low, 0)
    high = np.where(valid, high, 0)
    return low, high, w_low, w_high


def _chunk_taps(coords, rows, spatial_scale, aligned, pooled, sampling_ratio, height, width):
    """The 4 taps of every sample of the RoIs `rows`: flat (y*W + x) indices and weights.

    Returned arrays have shape (k, PH, Gh, PW, Gw); also the per-RoI counts (k,).
    """
    (sy, bh, gh), (sx, bw, gw), count = _roi_grids(coords[rows], spatial_scale, aligned,
                                                   pooled, sampling_ratio)
    y_lo, y_hi, wy_lo, wy_hi = _axis_taps(sy, bh, gh, pooled[0], height)
    x_lo, x_hi, wx_lo, wx_hi = _axis_taps(sx, bw, gw, pooled[1], width)

    def outer(a, b):
        """(k, PH, Gh) x (k, PW, Gw) -> (k, PH, Gh, PW, Gw)."""
        return a[:, :, :, None, None], b[:, None, None, :, :]

    index = []
    weight = []
    for ys, wys in ((y_lo, wy_lo), (y_hi, wy_hi)):  # torchvision's tap order: (lo,lo) (lo,hi) (hi,lo) (hi,hi)
        for xs, wxs in ((x_lo, wx_lo), (x_hi, wx_hi)):
            yy, xx = outer(ys, xs)
            wy, wx = outer(wys, wxs)
            index.append(yy * width + xx)
            weight.append(wy * wx)
    return index, weight, count


def _samples_per_roi(coords, spatial_scale, aligned, pooled, sampling_ratio):
    """Padded samples per RoI (PH * PW * largest Gh * largest Gw), to size the chunks."""
    if len(coords) == 0:
        return 1
    (_, _, grid_h), (_, _, grid_w), _ = _roi_grids(coords, spatial_scale, aligned, pooled,
                                                   sampling_ratio)
    return pooled[0] * pooled[1] * max(int(grid_h.max()), 1) * max(int(grid_w.max()), 1)


def _chunks(order, per_roi):
    """Split the RoI indices `order` into chunks of about CHUNK_ELEMENTS / per_roi RoIs."""
    size = max(1, CHUNK_ELEMENTS // max(per_roi, 1))
    return [order[i:i + size] for i in range(0, len(order), size)]


def _sum_bins(samples, axis_gh, axis_gw):
    """Sum the sample axes of a (.., PH, Gh, PW, Gw, ..) array in torchvision's order."""
    gh = samples.shape[axis_gh]
    gw = samples.shape[axis_gw]
    pick = [slice(None)] * samples.ndim
    total = None
    for iy in range(gh):
        for ix in range(gw):
            pick[axis_gh], pick[axis_gw] = iy, ix  # both at once: axis numbers stay valid
            term = samples[tuple(pick)]
            total = term.copy() if total is None else total + term
    return total


def roi_align(features, boxes, output_size, spatial_scale=1.0, sampling_ratio=-1,
              aligned=False, layout="NCHW"):
    """RoIAlign forward (average mode) in NumPy; boxes (K, 5), output (K, C, PH, PW) / NHWC."""
    pooled = (output_size, output_size) if np.isscalar(output_size) else tuple(output_size)
    dtype = features.dtype
    boxes = np.asarray(boxes)
    batch_index = boxes[:, 0].astype(np.int64)
    coords = np.ascontiguousarray(boxes[:, 1:], dtype=dtype)
    if layout == "NCHW":
        n, c, h, w = features.shape
        out = np.empty((len(boxes), c, *pooled), dtype=dtype)
    else:
        n, h, w, c = features.shape
        out = np.empty((len(boxes), *pooled, c), dtype=dtype)
    samples_per_roi = _samples_per_roi(coords, spatial_scale, aligned, pooled, sampling_ratio) * c
    for image in range(n):
        rois = np.flatnonzero(batch_index == image)
        plane = (features[image].reshape(c, h * w) if layout == "NCHW"
                 else features[image].reshape(h * w, c))
        for rows in _chunks(rois, samples_per_roi):
            index, weight, count = _chunk_taps(coords, rows, spatial_scale, aligned, pooled,
                                               sampling_ratio, h, w)
            shape = index[0].shape  # (k, PH, Gh, PW, Gw)
            if layout == "NCHW":
                taps = [np.take(plane, i.ravel(), axis=1) for i in index]  # (C, M) each
                wts = [wt.reshape(1, -1) for wt in weight]
                value = (wts[0] * taps[0] + wts[1] * taps[1]) + wts[2] * taps[2]
                value = (value + wts[3] * taps[3]).reshape(c, *shape)
                pooled_sum = _sum_bins(value, 3, 5)  # (C, k, PH, PW)
                out[rows] = (pooled_sum / count[None, :, None, None]).transpose(1, 0, 2, 3)
            else:
                taps = [plane[i.ravel()] for i in index]  # (M, C) each
                wts = [wt.reshape(-1, 1) for wt in weight]
                value = (wts[0] * taps[0] + wts[1] * taps[1]) + wts[2] * taps[2]
                value = (value + wts[3] * taps[3]).reshape(*shape, c)
                pooled_sum = _sum_bins(value, 2, 4)  # (k, PH, PW, C)
                out[rows] = pooled_sum / count[:, None, None, None]
    return out


def roi_align_backward(grad_output, boxes, input_shape, output_size, spatial_scale=1.0,
                       sampling_ratio=-1, aligned=False, layout="NCHW"):
    """Gradient of roi_align w.r.t. the features: each sample scatters grad * w / count.

    The scatter is np.add.at on the flattened image (duplicates summed), one call per tap;
    taps of weight 0 (padding, samples outside the map) are dropped first.
    """
    pooled = (output_size, output_size) if np.isscalar(output_size) else tuple(output_size)
    dtype = grad_output.dtype
    boxes = np.asarray(boxes)
    batch_index = boxes[:, 0].astype(np.int64)
    coords = np.ascontiguousarray(boxes[:, 1:], dtype=dtype)
    grad_input = np.zeros(input_shape, dtype=dtype)
    if layout == "NCHW":
        n, c, h, w = input_shape
    else:
        n, h, w, c = input_shape
    samples_per_roi = _samples_per_roi(coords, spatial_scale, aligned, pooled, sampling_ratio) * c
    for image in range(n):
        rois = np.flatnonzero(batch_index == image)
        flat_image = grad_input[image].reshape(-1)
        for rows in _chunks(rois, samples_per_roi):
            index, weight, count = _chunk_taps(coords, rows, spatial_scale, aligned, pooled,
                                               sampling_ratio, h, w)
            g = grad_output[rows] / count[:, None, None, None]
            for tap_index, tap_weight in zip(index, weight):
                if layout == "NCHW":  # (k, C, PH, Gh, PW, Gw), element c*H*W + y*W + x
                    g_bins = g[:, :, :, None, :, None]
                    values = g_bins * tap_weight[:, None]
                    flat = (np.arange(c)[None, :, None, None, None, None] * (h * w)
                            + tap_index[:, None])
                    keep = np.broadcast_to((tap_weight != 0)[:, None], values.shape)
                else:  # (k, PH, Gh, PW, Gw, C), element (y*W + x)*C + c
                    g_bins = g[:, :, None, :, None, :]
                    values = g_bins * tap_weight[..., None]
                    flat = tap_index[..., None] * c + np.arange(c)
                    keep = np.broadcast_to((tap_weight != 0)[..., None], values.shape)
                np.add.at(flat_image, np.broadcast_to(flat, values.shape)[keep], values[keep])
    return grad_input
