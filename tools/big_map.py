"""64-bit offsets: roi_align / roi_pool (forward and backward) on maps of more than 2**31 elements.

torchvision's CPU kernels index with int and overflow on such maps (vision#8206). This script
builds float32 maps just past 2**31 elements (8 GiB each, one at a time), puts boxes near the
END of the map (where every element offset exceeds 2**31), and checks every result against a
direct bilinear / max computation that reads the taps itself, in float64.

    python tools/big_map.py            # fills each map completely (about 8 GiB resident)
    python tools/big_map.py --lazy     # zero map with only the box regions written (fast)
    python tools/big_map.py --blocked  # also the many-RoI (channel block) forward on it

Memory: about 8.5 GiB peak (the map, plus the gradients' touched pages). Run it alone,
not in the test suite. Exit status 0 when every check passed.
"""

import argparse
import math
import sys
import time

import numpy as np

import roialign_cy
from roialign_cy import roi_align, roi_align_backward, roi_pool, roi_pool_backward


def fill(array, layout, rows=None):
    """Write ((31 y + 17 x + 7 c) mod 1013) / 1013 into the map (all of it, or only the given row range), chunk by chunk."""
    height = array.shape[2] if layout == "NCHW" else array.shape[1]
    width = array.shape[3] if layout == "NCHW" else array.shape[2]
    channels = array.shape[1] if layout == "NCHW" else array.shape[3]
    first, last = rows if rows is not None else (0, height)
    x = np.arange(width, dtype=np.int32)
    for start in range(first, last, 512):
        y = np.arange(start, min(start + 512, last), dtype=np.int32)[:, None]
        for c in range(channels):
            values = ((y * 31 + x[None, :] * 17 + c * 7) % 1013).astype(np.float32)
            values /= np.float32(1013)
            for b in range(array.shape[0]):
                if layout == "NCHW":
                    array[b, c, start:start + len(y)] = values
                else:
                    array[b, start:start + len(y), :, c] = values


def samples(start, bin_size, p, grid):
    """Sample coordinates of bin p along one axis, in float32 as the kernels (and torchvision)
    evaluate them: near 46341 a float32 coordinate is only good to 0.004 pixel."""
    f = np.float32
    return [float((start + f(p) * bin_size) + (f(i) + f(0.5)) * bin_size / f(grid))
            for i in range(grid)]


def taps(coord, size):
    """(low, high, weight_low, weight_high) of one coordinate, or None outside [-1, size]."""
    if not (-1 <= coord <= size):
        return None
    coord = max(coord, 0.0)
    low = math.floor(coord)
    if low >= size - 1:
        return size - 1, size - 1, 1.0, 0.0
    frac = coord - low
    return low, low + 1, 1.0 - frac, frac


def direct_align(read, height, width, box, output_size, scale, sampling_ratio, aligned, mode):
    """RoIAlign of one box and channel by direct bilinear evaluation; read(y, x) -> value.

    The RoI geometry is evaluated in float32 (the map's type), values in float64. Also
    returns the scatter of a unit gradient per bin (avg mode) as {(y, x): weight}.
    """
    f = np.float32
    ph_n, pw_n = output_size
    x1, y1, x2, y2 = (f(v) for v in box)
    offset = f(0.5) if aligned else f(0.0)
    start_x, start_y = x1 * f(scale) - offset, y1 * f(scale) - offset
    roi_w = (x2 * f(scale) - offset) - start_x
    roi_h = (y2 * f(scale) - offset) - start_y
    if not aligned:
        roi_w, roi_h = max(roi_w, f(1)), max(roi_h, f(1))
    bin_w, bin_h = roi_w / f(pw_n), roi_h / f(ph_n)
    grid_h = sampling_ratio if sampling_ratio > 0 else max(math.ceil(bin_h), 0)
    grid_w = sampling_ratio if sampling_ratio > 0 else max(math.ceil(bin_w), 0)
    count = max(grid_h * grid_w, 1)
    out = np.zeros((ph_n, pw_n))
    scatter = {}
    for ph in range(ph_n):
        for pw in range(pw_n):
            values = []
            for y in samples(start_y, bin_h, ph, grid_h):
                for x in samples(start_x, bin_w, pw, grid_w):
                    ty, tx = taps(y, height), taps(x, width)
                    if ty is None or tx is None:
                        values.append(0.0)
                        continue
                    value = 0.0
                    for yy, wy in ((ty[0], ty[2]), (ty[1], ty[3])):
                        for xx, wx in ((tx[0], tx[2]), (tx[1], tx[3])):
                            value += wy * wx * float(read(yy, xx))
                            scatter[(yy, xx)] = scatter.get((yy, xx), 0.0) + wy * wx / count
                    values.append(value)
            if values:
                out[ph, pw] = sum(values) / count if mode == "avg" else max(values)
    return out, scatter


def direct_pool(read, height, width, box, output_size, scale):
    """torchvision's roi_pool of one box and channel; also each bin's arg-max (y, x)."""
    def axis(first, last, n_bins, size):
        start = math.copysign(math.floor(abs(first * scale) + 0.5), first * scale)
        end = math.copysign(math.floor(abs(last * scale) + 0.5), last * scale)
        length = max(end - start + 1, 1)
        bin_size = length / n_bins
        return [(int(min(max(math.floor(p * bin_size) + start, 0), size)),
                 int(min(max(math.ceil((p + 1) * bin_size) + start, 0), size)))
                for p in range(n_bins)]

    x1, y1, x2, y2 = (float(np.float32(v)) for v in box)
    out = np.zeros(output_size)
    winners = {}
    for ph, (h0, h1) in enumerate(axis(y1, y2, output_size[0], height)):
        for pw, (w0, w1) in enumerate(axis(x1, x2, output_size[1], width)):
            best, where = -np.finfo(np.float32).max, None
            for y in range(h0, h1):
                for x in range(w0, w1):
                    if read(y, x) > best:
                        best, where = read(y, x), (y, x)
            if where is not None:
                out[ph, pw] = best
                winners[(ph, pw)] = where
    return out, winners


class Checks:
    """Collect PASS/FAIL lines."""

    def __init__(self):
        self.failed = 0

    def check(self, name, ok, detail=""):
        print(f"  {'PASS' if ok else 'FAIL'} {name} {detail}", flush=True)
        self.failed += not ok


def run_map(shape, layout, lazy, checks, blocked):
    """Build one big map, run every entry point near its end, compare with direct values."""
    n_elements = int(np.prod(shape))
    print(f"== map {shape} {layout} float32: {n_elements:,} elements "
          f"({n_elements / 2**31:.4f} x 2**31, {n_elements * 4 / 2**30:.2f} GiB)", flush=True)
    assert n_elements > 2**31
    started = time.perf_counter()
    features = np.zeros(shape, np.float32)
    n_images = shape[0]
    height, width = (shape[2], shape[3]) if layout == "NCHW" else (shape[1], shape[2])
    channels = shape[1] if layout == "NCHW" else shape[3]
    if lazy:
        fill(features, layout, rows=(0, 16))
        fill(features, layout, rows=(height - 64, height))
    else:
        fill(features, layout)
    print(f"  map filled in {time.perf_counter() - started:.1f}s", flush=True)
    last = n_images - 1
    boxes = np.array([
        [last, width - 30.3, height - 20.7, width - 0.2, height - 0.5],    # inside, at the end
        [last, width - 5.0, height - 5.0, width + 3.0, height + 3.0],      # over the far corner
        [last, width - 1000.25, height - 2.0, width - 0.5, height - 0.25],  # the last rows
        [last, width - 3.5, height - 60.0, width - 0.5, height - 1.0],     # the last columns
        [0, 1.0, 1.0, 10.0, 10.0],                                          # the start
    ])
    last_offset = ((last * height + height - 1) * width + width - 1) * channels
    print(f"  last element offset {last_offset:,} (> 2**31 - 1: {last_offset > 2**31 - 1})")

    def reader(b, c):
        if layout == "NCHW":
            return lambda y, x: features[b, c, y, x]
        return lambda y, x: features[b, y, x, c]

    def pooled_nchw(result):
        return result if layout == "NCHW" else np.moveaxis(result, -1, 1)

    for mode, output_size, sampling_ratio in (("avg", (4, 5), 2), ("max", (3, 3), -1),
                                              ("avg", (2, 3), -1)):
        t0 = time.perf_counter()
        result = pooled_nchw(roi_align(features, boxes, output_size, 1.0, sampling_ratio, True,
                                       layout=layout, mode=mode))
        elapsed = time.perf_counter() - t0
        worst = 0.0
        for k, row in enumerate(boxes):
            for c in range(channels):
                expected, _ = direct_align(reader(int(row[0]), c), height, width, row[1:],
                                           output_size, 1.0, sampling_ratio, True, mode)
                worst = max(worst, float(np.abs(result[k, c] - expected).max()))
        checks.check(f"roi_align {mode} {output_size} sr={sampling_ratio}",
                     worst < 1e-4 and np.isfinite(result).all(),
                     f"max |error| {worst:.2e} ({elapsed:.2f}s)")

    t0 = time.perf_counter()
    result = pooled_nchw(roi_pool(features, boxes, (3, 4), layout=layout))
    worst = 0.0
    for k, row in enumerate(boxes):
        for c in range(channels):
            expected, _ = direct_pool(reader(int(row[0]), c), height, width, row[1:], (3, 4), 1.0)
            worst = max(worst, float(np.abs(result[k, c] - expected).max()))
    checks.check("roi_pool (3, 4)", worst == 0.0,
                 f"max |error| {worst:.2e} ({time.perf_counter() - t0:.2f}s)")

    # Backward: gradients land near the end of an 8 GiB zeroed (lazily mapped) array.
    output_size = (2, 3)
    pooled_shape = ((len(boxes), channels) + output_size if layout == "NCHW"
                    else (len(boxes),) + output_size + (channels,))
    grad = np.ones(pooled_shape, np.float32)
    t0 = time.perf_counter()
    gradient = roi_align_backward(grad, boxes, shape, output_size, 1.0, 2, True, layout=layout)
    elapsed = time.perf_counter() - t0
    expected = {}
    for row in boxes:
        b = int(row[0])
        for c in range(channels):
            _, scatter = direct_align(reader(b, c), height, width, row[1:], output_size, 1.0,
                                      2, True, "avg")
            for (y, x), weight in scatter.items():
                expected[(b, c, y, x)] = expected.get((b, c, y, x), 0.0) + weight
    worst = 0.0
    for (b, c, y, x), weight in expected.items():
        value = gradient[b, c, y, x] if layout == "NCHW" else gradient[b, y, x, c]
        worst = max(worst, abs(float(value) - weight))
    expected_total = sum(expected.values())
    region_total = 0.0
    for b in range(n_images):
        part = (gradient[b, :, height - 64:, width - 1100:] if layout == "NCHW"
                else gradient[b, height - 64:, width - 1100:])
        region_total += float(part.sum(dtype=np.float64))
        part = gradient[b, :, :16, :16] if layout == "NCHW" else gradient[b, :16, :16]
        region_total += float(part.sum(dtype=np.float64))
    whole = float(gradient.sum(dtype=np.float64))  # nothing landed anywhere else
    checks.check("roi_align_backward avg", worst < 1e-5 and abs(whole - region_total) < 1e-6
                 and abs(region_total - expected_total) < 1e-4 * max(expected_total, 1),
                 f"max |error| {worst:.2e} over {len(expected)} elements, total "
                 f"{region_total:.6f} vs direct {expected_total:.6f} ({elapsed:.2f}s)")
    del gradient

    t0 = time.perf_counter()
    gradient = roi_pool_backward(grad, boxes, features, output_size, layout=layout)
    elapsed = time.perf_counter() - t0
    ok = True
    expected_total = 0
    for k, row in enumerate(boxes):
        b = int(row[0])
        for c in range(channels):
            _, winners = direct_pool(reader(b, c), height, width, row[1:], output_size, 1.0)
            expected_total += len(winners)
            for (y, x) in winners.values():
                value = gradient[b, c, y, x] if layout == "NCHW" else gradient[b, y, x, c]
                ok &= value >= 1.0
    region_total = 0.0
    for b in range(n_images):
        part = (gradient[b, :, height - 64:, width - 1100:] if layout == "NCHW"
                else gradient[b, height - 64:, width - 1100:])
        region_total += float(part.sum(dtype=np.float64))
        part = gradient[b, :, :16, :16] if layout == "NCHW" else gradient[b, :16, :16]
        region_total += float(part.sum(dtype=np.float64))
    whole = float(gradient.sum(dtype=np.float64))  # nothing landed anywhere else
    checks.check("roi_pool_backward", ok and region_total == expected_total == whole,
                 f"{region_total:.0f} unit gradients placed, direct {expected_total} "
                 f"({elapsed:.2f}s)")
    del gradient

    if blocked:
        # Enough RoIs that the forward picks the channel-block kernel (RoI taps >= pixels).
        output_size = (32, 32)
        n_rois = n_images * height * width // (32 * 32 * 16) + 1
        many = np.repeat(boxes[:1], n_rois, axis=0)
        print(f"  channel-block forward: {n_rois:,} RoIs of {output_size}: result "
              f"{n_rois * channels * 32 * 32 * 4 / 2**30:.2f} GiB", flush=True)
        t0 = time.perf_counter()
        try:
            result = roi_align(features, many, output_size, 1.0, 2, True, layout=layout)
        except MemoryError as error:
            checks.check("roi_align channel blocks on the big map", False,
                         f"MemoryError: {error} ({time.perf_counter() - t0:.2f}s)")
        else:
            expected = pooled_nchw(roi_align(features, boxes[:1], output_size, 1.0, 2, True,
                                             layout=layout))
            same = bool((pooled_nchw(result) == expected).all())
            checks.check("roi_align channel blocks on the big map", same,
                         f"({time.perf_counter() - t0:.2f}s)")
            del result
    del features


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lazy", action="store_true",
                        help="write only the box regions (the rest stays unmapped zeros)")
    parser.add_argument("--blocked", action="store_true",
                        help="also run the many-RoI channel-block forward on the big map")
    args = parser.parse_args()
    print(f"roialign_cy {roialign_cy.__version__} {roialign_cy.show_config(print_out=False)}")
    checks = Checks()
    started = time.perf_counter()
    run_map((1, 1, 46341, 46341), "NCHW", args.lazy, checks, args.blocked)
    run_map((2, 32769, 32769, 1), "NHWC", args.lazy, checks, False)
    run_map((1, 23171, 23171, 4), "NHWC", args.lazy, checks, False)
    print(f"== {'ALL PASSED' if not checks.failed else f'{checks.failed} FAILED'} "
          f"in {time.perf_counter() - started:.1f}s")
    return 1 if checks.failed else 0


if __name__ == "__main__":
    sys.exit(main())
