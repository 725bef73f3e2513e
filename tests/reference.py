"""A slow, loop-based NumPy RoIAlign written straight from SEMANTICS.md, to test against.

Independent of the package: plain Python loops over RoIs, bins and samples, float64 math.
Only the box coordinates and the scale are first rounded to the features' dtype, because the
package (like torchvision) does that before computing anything.
"""

import math

import numpy as np


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
