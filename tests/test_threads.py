"""The one home for threads: results are bit-identical for any thread count (every function,
both kernel variants), concurrent calls from Python threads give the serial results, a
fork does not hang, and show_config reports the build."""

import math
import os
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from golden import case_names, load_case
from reference import bilinear_taps
from roi_inputs import random_boxes, to_layout, to_nchw

import roialign_cy
from roialign_cy import (
    RoIAlign,
    _roi_align,
    _roi_pool,
    roi_align,
    roi_align_backward,
    roi_pool,
    roi_pool_backward,
)


# ---- Thread count changes nothing but speed; show_config reports the build. --------------------


@pytest.mark.parametrize("mode", ["avg", "max"])
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("output_size, n_spare", [(7, 0), (2, 12)], ids=["rois", "pixels"])
def test_thread_count_gives_bit_identical_results(output_size, n_spare, layout, mode):
    """Many RoIs per image, then (spare NaN images) more pixels than taps: both kernels."""
    rng = np.random.default_rng(12)
    features = rng.standard_normal((2 + n_spare, 64, 64, 64)).astype(np.float32)
    features[2:] = np.nan
    features = to_layout(features, layout)
    boxes = random_boxes(rng, 2, 64, 64, 1 / 8, n_boxes=300)
    args = (boxes, output_size, 1 / 8, -1, True)
    serial = roi_align(features, *args, layout=layout, mode=mode, num_threads=1)
    assert np.isfinite(serial).all()
    for num_threads in (None, 2, 3, 16):
        parallel = roi_align(features, *args, layout=layout, mode=mode, num_threads=num_threads)
        np.testing.assert_array_equal(parallel, serial)


def test_show_config():
    config = roialign_cy.show_config(print_out=False)
    assert set(config) == {"version", "openmp", "max_threads", "simd"}
    assert config["simd"] in ("avx2", "baseline")
    assert config["version"] == roialign_cy.__version__
    assert isinstance(config["openmp"], bool)
    assert isinstance(config["max_threads"], int) and config["max_threads"] >= 1
    if not config["openmp"]:
        assert config["max_threads"] == 1


def test_openmp_is_compiled_in():
    """A wheel must not ship silently serial; ROIALIGN_CY_NO_OPENMP=1 marks a serial build."""
    serial_wanted = os.environ.get("ROIALIGN_CY_NO_OPENMP", "") not in ("", "0")
    assert roialign_cy.show_config(print_out=False)["openmp"] is not serial_wanted


# ---- Thread safety: concurrent calls from Python threads give exactly the serial results. ------


TIMEOUT = 120  # seconds; a deadlock fails the test instead of hanging CI


def make_job(seed):
    """One call of one entry point on its own random inputs: (function, args, kwargs)."""
    rng = np.random.default_rng(seed)
    kind = seed % 5
    layout = "NHWC" if seed % 2 else "NCHW"
    dtype = [np.float32, np.float64, np.float16][seed % 3]
    n, c, h, w = 2, int(rng.integers(1, 40)), int(rng.integers(4, 40)), int(rng.integers(4, 40))
    k = int(rng.integers(1, 60))
    xy = rng.uniform(-4, max(h, w), (k, 2))
    boxes = np.column_stack([rng.integers(0, n, k), xy, xy + rng.uniform(-2, 20, (k, 2))])
    output_size = (int(rng.integers(1, 8)), int(rng.integers(1, 8)))
    shape = (n, c, h, w) if layout == "NCHW" else (n, h, w, c)
    features = rng.standard_normal(shape).astype(dtype)
    pooled = (k, c) + output_size if layout == "NCHW" else (k,) + output_size + (c,)
    grad = rng.standard_normal(pooled).astype(dtype)
    num_threads = [None, 1, 2, 3][seed % 4]
    common = dict(layout=layout, num_threads=num_threads)
    mode = "max" if seed % 3 == 0 else "avg"
    if kind == 0:
        return roi_align, (features, boxes, output_size, 0.5, -1, True), dict(mode=mode, **common)
    if kind == 1:
        return (roi_align_backward, (grad, boxes, shape, output_size, 0.5, 2, False),
                dict(mode=mode, input=features, **common))
    if kind == 2:
        return roi_pool, (features, boxes, output_size, 0.5), common
    if kind == 3:
        return roi_pool_backward, (grad, boxes, features, output_size, 0.5), common
    layer = RoIAlign(output_size, 0.5, sampling_ratio=0, mode=mode, layout=layout)
    return layer, (features, boxes), dict(num_threads=num_threads)


def run(job):
    function, args, kwargs = job
    return function(*args, **kwargs)


@pytest.fixture(scope="module")
def jobs_and_serial_results():
    jobs = [make_job(seed) for seed in range(80)]
    return jobs, [run(job) for job in jobs]


@pytest.mark.parametrize("rounds", [3])
def test_threads_give_serial_results(jobs_and_serial_results, rounds):
    """8 threads, 80 different calls of every entry point, several rounds: identical bits."""
    jobs, serial = jobs_and_serial_results
    with ThreadPoolExecutor(max_workers=8) as pool:
        for _ in range(rounds):
            futures = [pool.submit(run, job) for job in jobs]
            for future, expected in zip(futures, serial):
                result = future.result(timeout=TIMEOUT)
                assert result.dtype == expected.dtype
                np.testing.assert_array_equal(result, expected)


def test_threads_sharing_inputs_and_writing_own_out():
    """Threads reading the same features/boxes, each writing its own `out`, in parallel."""
    rng = np.random.default_rng(7)
    features = rng.standard_normal((2, 32, 48, 48)).astype(np.float32)
    features.flags.writeable = False
    xy = rng.uniform(0, 40, (300, 2))
    boxes = np.column_stack([rng.integers(0, 2, 300), xy, xy + rng.uniform(1, 20, (300, 2))])
    expected = roi_align(features, boxes, 7, 0.5, 2, True)
    outs = [np.empty_like(expected) for _ in range(16)]

    def call(i):
        return roi_align(features, boxes, 7, 0.5, 2, True, out=outs[i], num_threads=1 + i % 3)

    with ThreadPoolExecutor(max_workers=8) as pool:
        returned = list(pool.map(call, range(16), timeout=TIMEOUT))
    for out, result in zip(outs, returned):
        assert result is out
        np.testing.assert_array_equal(out, expected)


def test_nested_thread_pool_with_num_threads_does_not_deadlock():
    """Thread pools inside thread pools, every call asking OpenMP for several threads."""
    rng = np.random.default_rng(11)
    features = rng.standard_normal((1, 64, 64, 64)).astype(np.float32)
    xy = rng.uniform(0, 50, (200, 2))
    boxes = np.column_stack([np.zeros(200), xy, xy + 12])
    expected = roi_align(features, boxes, 5, num_threads=1)
    grad = np.ones_like(expected)
    expected_grad = roi_align_backward(grad, boxes, features.shape, 5, num_threads=1)

    def inner(num_threads):
        a = roi_align(features, boxes, 5, num_threads=num_threads)
        g = roi_align_backward(grad, boxes, features.shape, 5, num_threads=num_threads)
        return np.array_equal(a, expected) and np.array_equal(g, expected_grad)

    def outer(i):
        with ThreadPoolExecutor(max_workers=4) as pool:
            return all(pool.map(inner, [2, 4, 8, None] * 2, timeout=TIMEOUT))

    with ThreadPoolExecutor(max_workers=4) as pool:
        assert all(pool.map(outer, range(4), timeout=TIMEOUT))


def test_parallel_results_do_not_depend_on_thread_count():
    """Forward and both backwards: bit-identical for 1, 2 and 7 threads (no atomics/races)."""
    rng = np.random.default_rng(5)
    features = rng.standard_normal((3, 48, 40, 40))
    xy = rng.uniform(-5, 35, (400, 2))
    boxes = np.column_stack([rng.integers(0, 3, 400), xy, xy + rng.uniform(0, 25, (400, 2))])
    grad = rng.standard_normal((400, 48, 4, 4))
    results = []
    for num_threads in (1, 2, 7):
        results.append((
            roi_align(features, boxes, 4, num_threads=num_threads, mode="max"),
            roi_align_backward(grad, boxes, features.shape, 4, num_threads=num_threads),
            roi_align_backward(grad, boxes, features.shape, 4, mode="max", input=features,
                               num_threads=num_threads),
            roi_pool_backward(grad, boxes, features, 4, num_threads=num_threads),
        ))
    for other in results[1:]:
        for a, b in zip(results[0], other):
            np.testing.assert_array_equal(a, b)


_FORK_CHILD = textwrap.dedent("""
    import json, multiprocessing, os, sys
    sys.path[:] = json.loads(os.environ["ROIALIGN_TEST_SYS_PATH"])
    import numpy as np
    from roialign_cy import roi_align

    features = np.random.default_rng(0).random((2, 64, 32, 32)).astype(np.float32)
    boxes = np.array([[i % 2, 1, 1, 20, 25] for i in range(64)], dtype=np.float32)

    def work(_):
        return float(roi_align(features, boxes, 7, num_threads=2).sum())

    if __name__ == "__main__":
        expected = work(0)  # the parent has run an OpenMP team before it forks
        with multiprocessing.get_context("fork").Pool(1) as pool:
            try:
                got = pool.apply_async(work, (0,)).get(timeout=5)
            except multiprocessing.TimeoutError:
                pool.terminate()
                print("HUNG")
                sys.exit(3)
        print("OK" if got == expected else "WRONG")
""")


@pytest.mark.skipif(sys.platform != "linux", reason="fork start method: Linux")
def test_fork_after_parallel_call_does_not_hang(tmp_path):
    """GNU libgomp is not fork-safe: a child forked after the parent ran an OpenMP team hangs
    in its first parallel region (multiprocessing's default start method on Linux before
    Python 3.14). The package must run such children serially instead."""
    import json

    script = tmp_path / "fork_child.py"
    script.write_text(_FORK_CHILD)
    env = dict(os.environ, ROIALIGN_TEST_SYS_PATH=json.dumps(sys.path))
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=60, env=env, cwd=tmp_path)
    assert proc.stdout.strip() == "OK", proc.stdout + proc.stderr[-2000:]


# ---- roi_align_backward: torchvision's gradients, finite differences, the adjoint identity, ----


LAYOUTS = ["NCHW", "NHWC"]


# (spatial_scale, output_size, sampling_ratio, aligned)
CONFIGS = [
    (1.0, (3, 3), 2, False),
    (1.0, (2, 3), -1, True),
    (0.5, (3, 2), 0, False),
    (0.5, (2, 2), 1, True),
]


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


def reference_backward(features, boxes, grad_output, output_size, spatial_scale,
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


def max_margins(features, boxes, output_size, spatial_scale, sampling_ratio, aligned):
    """Per box: the smallest gap between the best and second-best sample of any bin and
    channel (outside samples counting as 0), and how many of its bins an outside 0 wins.

    Samples with the same taps (all outside ones; those clamped onto the same border pixel)
    tie harmlessly, whichever wins the gradient is the same: they count once.
    """
    _, _, height, width = features.shape
    margins, outside_wins = [], []
    for batch_index, *box in boxes:
        bins, _ = sample_grid(box, spatial_scale, output_size, sampling_ratio, aligned,
                              height, width)
        gap, wins = np.inf, 0
        for samples in bins.values():
            samples = list({None if t is None else tuple(t): t for t in samples}.values())
            if len(samples) < 2:
                continue
            values = np.array([sample_values(features[int(batch_index)], t) for t in samples])
            top2 = np.sort(values, axis=0)[-2:]
            gap = min(gap, float(np.min(top2[1] - top2[0])))
            wins += sum(samples[i] is None for i in np.argmax(values, axis=0))
        margins.append(gap)
        outside_wins.append(wins)
    return np.array(margins), np.array(outside_wins)


def one_bin_max_gradient(value, box, layout="NCHW"):
    """Max-mode gradient of a 1x1 output (sampling_ratio 2) over a constant 6x6 map."""
    features = to_layout(np.full((1, 1, 6, 6), value), layout)
    grad = np.ones((1, 1, 1, 1))
    grad_input = roi_align_backward(grad, np.array([[0.0, *box]]), features.shape, 1,
                                    sampling_ratio=2, layout=layout, mode="max",
                                    input=features)
    return to_nchw(grad_input, layout)[0, 0]


def finite_difference_gradient(features, boxes, grad_output, step, **kwargs):
    """Central differences of <roi_align(x), grad_output> w.r.t. every element of x."""
    grad = np.zeros_like(features)
    flat, flat_grad = features.reshape(-1), grad.reshape(-1)
    for i in range(flat.size):
        saved = flat[i]
        flat[i] = saved + step
        plus = np.vdot(roi_align(features, boxes, **kwargs), grad_output)
        flat[i] = saved - step
        minus = np.vdot(roi_align(features, boxes, **kwargs), grad_output)
        flat[i] = saved
        flat_grad[i] = (plus - minus) / (2 * step)
    return grad


@pytest.fixture(scope="module")
def big_workload():
    """Features (2, 32, 48, 48) float32 and 400 boxes: enough work for every thread."""
    rng = np.random.default_rng(2024)
    features = rng.standard_normal((2, 32, 48, 48)).astype(np.float32)
    boxes = random_boxes(rng, 2, 48, 48, 1.0, n_boxes=400)
    # Plenty of ordinary overlapping boxes, so many RoIs add into the same feature elements.
    ordinary = rng.uniform(0, 40, (300, 2))
    extra = np.column_stack([rng.integers(0, 2, 300), ordinary,
                             ordinary + rng.uniform(4, 20, (300, 2))])
    return features, np.concatenate([boxes[:100], extra])


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("mode", ["avg", "max"])
def test_threads_bit_identical(big_workload, mode, layout):
    """roi_align and roi_align_backward give the same bits on 1 thread and on many.

    The forward's two kernels (per RoI; packed channel blocks) are each forced in turn.
    """
    features_nchw, boxes = big_workload
    features = to_layout(features_nchw, layout)
    kwargs = dict(output_size=7, spatial_scale=1.0, sampling_ratio=2, aligned=True,
                  layout=layout, mode=mode)
    many = max(4, os.cpu_count() or 1)
    serial = roi_align(features, boxes, num_threads=1, **kwargs)
    for n_threads in (None, many):
        assert np.array_equal(roi_align(features, boxes, num_threads=n_threads, **kwargs), serial)
    for variant in ("per_roi", "packed"):  # both forward kernels
        for n_threads in (1, many):
            assert np.array_equal(_roi_align.forward(features, boxes, num_threads=n_threads,
                                                     variant=variant, **kwargs), serial)
    grad_output = np.random.default_rng(1).standard_normal(serial.shape).astype(np.float32)
    serial_grad = roi_align_backward(grad_output, boxes, features.shape, input=features,
                                     num_threads=1, **kwargs)
    assert np.count_nonzero(serial_grad) > serial_grad.size // 4
    for n_threads in (None, many):
        threaded = roi_align_backward(grad_output, boxes, features.shape, input=features,
                                      num_threads=n_threads, **kwargs)
        assert np.array_equal(threaded, serial_grad)


# ---- roi_pool and roi_pool_backward: torchvision's golden numbers, a loop reference written from ---


DTYPES = [np.float32, np.float64]


FLT_MAX = float(np.finfo(np.float32).max)


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


def pool_in(features_nchw, boxes, output_size, spatial_scale=1.0, layout="NCHW", **kwargs):
    """roi_pool of NCHW features handed over in `layout`, the result as (K, C, PH, PW)."""
    pooled = roi_pool(to_layout(features_nchw, layout), boxes, output_size, spatial_scale,
                      layout=layout, **kwargs)
    return to_nchw(pooled, layout)


def pool_backward_in(grad_output_nchw, boxes, features_nchw, output_size, spatial_scale=1.0,
                     layout="NCHW", **kwargs):
    """roi_pool_backward with NCHW arrays handed over in `layout`; the gradient as NCHW."""
    grad = roi_pool_backward(to_layout(grad_output_nchw, layout), boxes,
                             to_layout(features_nchw, layout), output_size, spatial_scale,
                             layout=layout, **kwargs)
    return to_nchw(grad, layout)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_threads_bit_identical_pool(layout):
    """1 thread and many give the same bits, forward and backward, on a big workload."""
    rng = np.random.default_rng(2025)
    features = to_layout(rng.standard_normal((2, 32, 48, 48)).astype(np.float32), layout)
    corners = rng.uniform(-4, 40, (400, 2))
    boxes = np.column_stack([rng.integers(0, 2, 400), corners,
                             corners + rng.uniform(2, 24, (400, 2))])
    many = max(4, os.cpu_count() or 1)
    serial = roi_pool(features, boxes, 7, layout=layout, num_threads=1)
    grad_output = rng.standard_normal(serial.shape).astype(np.float32)
    serial_grad = roi_pool_backward(grad_output, boxes, features, 7, layout=layout,
                                    num_threads=1)
    assert np.count_nonzero(serial_grad) > serial_grad.size // 10
    for n_threads in (None, many):
        assert np.array_equal(roi_pool(features, boxes, 7, layout=layout,
                                       num_threads=n_threads), serial)
        assert np.array_equal(roi_pool_backward(grad_output, boxes, features, 7, layout=layout,
                                                num_threads=n_threads), serial_grad)


def argmax_to_nchw(argmax, layout):
    """Arg-max indices in `layout` as (K, C, PH, PW)."""
    return argmax if layout == "NCHW" else np.moveaxis(argmax, -1, 1)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_backward_from_argmax_threads_bit_identical(layout):
    """Many RoIs, many threads: the scatter keeps torchvision's order per element."""
    rng = np.random.default_rng(77)
    features = to_layout(rng.integers(0, 3, (2, 24, 30, 30)).astype(np.float32), layout)
    boxes = random_boxes(rng, 2, 30, 30, 1.0, n_boxes=300)
    pooled, argmax = roi_pool(features, boxes, 5, layout=layout, return_argmax=True)
    grad_output = rng.standard_normal(pooled.shape).astype(np.float32)
    expected = roi_pool_backward(grad_output, boxes, features, 5, layout=layout, num_threads=1)
    for n_threads in (1, 2, 5):
        got = roi_pool_backward(grad_output, boxes, features, 5, layout=layout,
                                num_threads=n_threads, argmax=argmax)
        np.testing.assert_array_equal(got, expected)
