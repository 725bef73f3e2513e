"""Feature elements each operator reads on the box_head_fpn workload, counted from its bins.

    python benchmarks/read_counts.py

Why prroi_pool costs more than roi_align with sampling_ratio=2 on the same boxes (issue 13's
3x target): a prroi_pool bin integrates every map pixel whose tent meets the bin, pixels
floor(lo)..ceil(hi) along each axis (mmcv's rule, _prroi_pool_kernels.axis_tents), while a
roi_align bin reads 4 taps of each of its 2 x 2 samples (those inside the map). Both read all
C channels of each pixel they touch, so the element ratio is the byte ratio. A channels-first
prroi_pool shares a bin row's column sums across its bins (column_sums): its reads are the
pixels of a bin row's union of columns, counted as `prroi_pool, rows shared`.
"""

import numpy as np

import workloads


def prroi_axis(start, bin_size, n_bins, size):
    """Pixels per bin along one axis: floor(lo)..ceil(hi) within [0, size - 1]."""
    lo = start[:, None] + bin_size[:, None] * np.arange(n_bins)
    first = np.maximum(np.floor(lo), 0)
    last = np.minimum(np.ceil(lo + bin_size[:, None]), size - 1)
    return np.maximum(last - first + 1, 0)


def roi_align_axis(start, bin_size, n_bins, grid, size):
    """Samples per bin along one axis inside [-1, size] (each has 2 taps along the axis)."""
    index = np.arange(n_bins)[:, None] * grid + np.arange(grid) + 0.5
    y = start[:, None, None] + index[None] * (bin_size / grid)[:, None, None]
    return ((y >= -1) & (y <= size)).sum(axis=2)


def main():
    wl = workloads.box_head_fpn()
    _, channels, height, width = wl.feature_shape
    ph, pw = wl.output_size
    boxes = wl.boxes[:, 1:] * wl.spatial_scale
    x1, y1, x2, y2 = boxes.T
    pr_y = prroi_axis(y1, np.maximum(y2 - y1, 0) / ph, ph, height)
    pr_x = prroi_axis(x1, np.maximum(x2 - x1, 0) / pw, pw, width)
    prroi = (pr_y[:, :, None] * pr_x[:, None, :]).sum()
    # a bin row's columns: from the first bin's first pixel to the last bin's last one
    row_columns = np.minimum(np.ceil(x2), width - 1) - np.maximum(np.floor(x1), 0) + 1
    shared = (pr_y.sum(axis=1) * np.maximum(row_columns, 0)).sum()
    offset = 0.5 if wl.aligned else 0.0
    ra_y = roi_align_axis(y1 - offset, (y2 - y1) / ph, ph, wl.sampling_ratio, height)
    ra_x = roi_align_axis(x1 - offset, (x2 - x1) / pw, pw, wl.sampling_ratio, width)
    taps = 4 * (ra_y.sum(axis=1) * ra_x.sum(axis=1)).sum()
    mib = channels * 4 / 2**20
    print(f"box_head_fpn: {len(boxes)} boxes, {ph}x{pw} bins, {channels} channels, float32")
    print("| operator | pixel reads | MiB read | / roi_align |")
    print("|---|---|---|---|")
    for name, count in (("roi_align, sampling_ratio 2 (4 taps a sample)", taps),
                        ("prroi_pool, bin by bin (channels-last)", prroi),
                        ("prroi_pool, rows shared (channels-first)", shared)):
        print(f"| {name} | {int(count):,} | {count * mib:,.0f} | {count / taps:.2f}x |")


if __name__ == "__main__":
    main()
