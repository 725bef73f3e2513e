"""Memory, time and precision stay bounded whatever the arguments: huge sampling grids run in
bounded memory (a child under a 1 GiB address-space limit) and time, merged grids give the
exact average of their samples, float32 sums never truncate, and a long call reacts to
SIGINT with KeyboardInterrupt, leaving the interpreter healthy."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from roialign_cy import roi_align

HUGE_GRIDS = [3000, 10**5, 10**9]
LAYOUTS = ["NCHW", "NHWC"]
# Under AddressSanitizer (tools/sanitize.sh) the shadow memory needs terabytes of address
# space and the unoptimised build is slow: no address-space limits, no time limits there.
UNDER_ASAN = "asan" in os.environ.get("LD_PRELOAD", "")


def _child(code, timeout=120, limit_gib=None):
    """Run `code` in a fresh interpreter (under an address-space limit); its stdout."""
    prologue = ""
    if limit_gib is not None and not UNDER_ASAN:
        prologue = textwrap.dedent(f"""
            import resource
            resource.setrlimit(resource.RLIMIT_AS, ({limit_gib} << 30, {limit_gib} << 30))
        """)
    result = subprocess.run([sys.executable, "-c", prologue + textwrap.dedent(code)],
                            capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS is Linux's")
def test_huge_sampling_ratios_fit_in_1_gib():
    """The issue's calls: a 20 px box, 7 x 7 bins, sampling_ratio 3000 / 10**5 / 10**9, in
    both layouts and both modes, forward and backward, each well under a second."""
    out = _child(f"""
        import time
        import numpy as np
        from roialign_cy import roi_align, roi_align_backward
        x = np.random.default_rng(0).random((1, 4, 32, 32), dtype=np.float32)
        box = np.array([[0, 1, 1, 20, 20]], np.float32)
        for layout in {LAYOUTS!r}:
            xl = x if layout == "NCHW" else np.ascontiguousarray(x.transpose(0, 2, 3, 1))
            for mode in ("avg", "max"):
                for sr in {HUGE_GRIDS!r}:
                    start = time.perf_counter()
                    pooled = roi_align(xl, box, 7, sampling_ratio=sr, layout=layout, mode=mode)
                    grad = roi_align_backward(np.ones_like(pooled), box, xl.shape, 7,
                                              sampling_ratio=sr, layout=layout, mode=mode,
                                              input=xl)
                    seconds = time.perf_counter() - start
                    assert np.isfinite(pooled).all() and np.isfinite(grad).all()
                    assert seconds < 1.0 or {UNDER_ASAN}, (layout, mode, sr, seconds)
        print("ok")
    """, limit_gib=1)
    assert out.strip() == "ok"


@pytest.mark.parametrize("layout", LAYOUTS)
def test_merged_grid_is_the_average_of_its_samples(layout):
    """A grid past the merging threshold (2049 x 2049 samples in one bin) equals the plain
    float64 average of all its samples, computed here sample by sample (vectorized)."""
    rng = np.random.default_rng(1)
    x = rng.random((1, 3, 9, 11))
    box = np.array([[0, 1.3, 0.6, 9.7, 7.9]])  # x1, y1, x2, y2: partly past the last column
    sr = 2049
    ys = 0.6 + (np.arange(sr) + 0.5) * (7.9 - 0.6) / sr
    xs = 1.3 + (np.arange(sr) + 0.5) * (9.7 - 1.3) / sr

    def axis_weights(coords, size):
        """(size, n) bilinear weight of each map row/column for each sample coordinate."""
        weights = np.zeros((size, len(coords)))
        inside = (coords >= -1) & (coords <= size)
        c = np.maximum(coords, 0)
        low = np.floor(c).astype(int)
        at_end = low >= size - 1
        low = np.where(at_end, size - 1, low)
        frac = np.where(at_end, 0.0, c - low)
        cols = np.arange(len(coords))
        np.add.at(weights, (low[inside], cols[inside]), (1 - frac)[inside])
        high = np.minimum(low + 1, size - 1)
        np.add.at(weights, (high[inside], cols[inside]), frac[inside])
        return weights

    wy = axis_weights(ys, 9).sum(axis=1)
    wx = axis_weights(xs, 11).sum(axis=1)
    expected = np.einsum("chw,h,w->c", x[0], wy, wx) / (sr * sr)
    xl = x if layout == "NCHW" else np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    got = roi_align(xl, box, 1, sampling_ratio=sr, layout=layout).reshape(3)
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_float32_sums_do_not_truncate(layout):
    """The issue's case: a (1, 8, 8, 1) map of ones, box [0, 0, 0, 8, 8], one bin,
    sampling_ratio 4200 (17.6M samples > 2**24): 1, not torchvision's 0.951."""
    ones = np.ones((1, 1, 8, 8), np.float32)
    if layout == "NHWC":
        ones = np.ascontiguousarray(ones.transpose(0, 2, 3, 1))
    for mode in ("avg", "max"):
        value = roi_align(ones, np.array([[0, 0, 0, 8, 8.0]]), 1, sampling_ratio=4200,
                          layout=layout, mode=mode)
        np.testing.assert_allclose(value.ravel(), [1.0], rtol=1e-6)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_merged_max_mode_is_exact(layout):
    """Max mode's merged grid keeps each cell's first and last sample: the same maximum, bit
    for bit, as the grid one below the merging threshold picks from the same coordinates
    (an exact statement: the maximum of a function linear in each axis over a cell)."""
    rng = np.random.default_rng(2)
    x = rng.standard_normal((1, 2, 6, 6)).astype(np.float64)
    xl = x if layout == "NCHW" else np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    box = np.array([[0, 0.2, 0.1, 5.1, 5.3]])
    # sampling_ratio 512 along both axes: 262,144 samples in the one bin, merged.
    merged = roi_align(xl, box, 1, sampling_ratio=512, layout=layout, mode="max")
    ys = 0.1 + (np.arange(512) + 0.5) * 5.2 / 512
    xs = 0.2 + (np.arange(512) + 0.5) * 4.9 / 512
    yy, xx = np.meshgrid(ys, xs, indexing="ij")
    y_low = np.minimum(np.floor(yy).astype(int), 4)
    x_low = np.minimum(np.floor(xx).astype(int), 4)
    ly, lx = yy - y_low, xx - x_low
    values = ((1 - ly) * (1 - lx) * x[0][:, y_low, x_low] + (1 - ly) * lx * x[0][:, y_low, x_low + 1]
              + ly * (1 - lx) * x[0][:, y_low + 1, x_low] + ly * lx * x[0][:, y_low + 1, x_low + 1])
    np.testing.assert_allclose(merged.ravel(), values.reshape(2, -1).max(axis=1), rtol=1e-12)


@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT to a child needs POSIX signals")
@pytest.mark.parametrize("layout,direction", [("NCHW", "forward"), ("NHWC", "forward"),
                                              ("NCHW", "backward")])
def test_sigint_interrupts_a_long_call(layout, direction):
    """Ctrl-C during a call of several seconds: KeyboardInterrupt within a second, and the
    interpreter still works (another call succeeds). The channels-first calls run packed
    work items of ~1000 RoIs each (0.45 s forward here): they must pause inside an item."""
    call = ("roi_align(x, boxes, 7, sampling_ratio=24, layout=layout, num_threads=1)"
            if direction == "forward" else
            "roi_align_backward(np.ones((4000, 256, 7, 7), np.float32), boxes, x.shape, 7, "
            "sampling_ratio=24, layout=layout, num_threads=1)")
    code = textwrap.dedent(f"""
        import signal, sys, time
        import numpy as np
        from roialign_cy import roi_align, roi_align_backward
        layout = {layout!r}
        # Python leaves SIGINT ignored when it starts ignored (a background job of a shell)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        rng = np.random.default_rng(0)
        x = rng.random((4, 256, 100, 100), dtype=np.float32)
        if layout == "NHWC":
            x = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
        # About 10 s on one core: 4000 RoIs of 50-100 px, 24 x 24 samples per bin.
        boxes = np.column_stack([rng.integers(0, 4, 4000), rng.uniform(0, 50, (4000, 2)),
                                 rng.uniform(50, 100, (4000, 2))])
        print("start", flush=True)
        try:
            {call}
            print("finished", flush=True)
        except KeyboardInterrupt:
            print("interrupted", time.monotonic(), flush=True)
            small = roi_align(np.ones((1, 1, 4, 4), np.float32), np.array([[0, 0, 0, 3, 3.0]]), 1)
            print("healthy", float(small.ravel()[0]), flush=True)
    """)
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "start"
        time.sleep(1.0)  # the long call is running now
        sent = time.monotonic()
        child.send_signal(signal.SIGINT)
        lines = child.stdout.read().split("\n")
        child.wait(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
    assert lines[0].startswith("interrupted"), lines
    latency = float(lines[0].split()[1]) - sent
    assert latency < 1.0 or UNDER_ASAN, latency
    assert lines[1] == "healthy 1.0"


def test_many_threads_are_capped():
    """num_threads=1000 runs (on at most the usable CPUs) instead of killing the process."""
    x = np.random.default_rng(3).random((2, 8, 40, 40), dtype=np.float32)
    boxes = np.array([[0, 1, 1, 30, 30], [1, 2, 3, 20, 35]] * 200, dtype=np.float32)
    np.testing.assert_array_equal(roi_align(x, boxes, 7, num_threads=1000),
                                  roi_align(x, boxes, 7, num_threads=1))


def test_no_scratch_for_idle_threads():
    """A call with one work item on many threads allocates one thread's scratch: its peak
    memory does not grow with the team (measured in a child under a tight RLIMIT_AS)."""
    out = _child("""
        import numpy as np
        from roialign_cy import roi_align
        x = np.ones((1, 256, 512, 512), np.float32)   # 256 MiB
        box = np.array([[0, 0, 0, 511, 511]], np.float32)
        print(float(roi_align(x, box, 64, sampling_ratio=8, num_threads=64).mean()))
    """, limit_gib=1)
    assert float(out) == pytest.approx(1.0)


def _kernel_arguments(features, boxes, batch_index, out, paused=None):
    """roi_align's forward kernel arguments (the order _plan.run passes them), per RoI."""
    return (features, False, boxes, batch_index, None, None, 1.0, 2, 2, 2, False, False, out,
            False, 1, paused, 0, 1)


@pytest.mark.parametrize("bad", ["strided features", "float64 features", "3-D features",
                                 "boxes too few", "boxes of 5", "int32 batch_index",
                                 "batch_index too long", "out of another size",
                                 "paused list too short", "paused list corrupt"])
def test_kernel_entry_refuses_what_it_cannot_read(bad):
    """The roi_align kernels read the call's arrays as raw buffers (_buffers.pxd): anything
    but the canonical arrays the wrapper hands over is an internal error, raised before a
    single element is read or written, never a read past an array's end."""
    from roialign_cy import _roi_align

    kernel = _roi_align.KERNELS["forward", "baseline", np.dtype(np.float32)]
    features = np.zeros((1, 2, 6, 6), np.float32)
    boxes = np.zeros((3, 4), np.float32)
    batch_index = np.zeros(3, np.intp)
    out = np.full((3, 2, 2, 2), 7, np.float32)
    np.testing.assert_array_equal(kernel(*_kernel_arguments(features, boxes, batch_index, out)),
                                  0)  # the canonical call runs (and returns "done")
    out[...] = 7
    paused = None
    if bad == "strided features":
        features = np.zeros((1, 2, 6, 12), np.float32)[..., ::2]
    elif bad == "float64 features":
        features = features.astype(np.float64)
    elif bad == "3-D features":
        features = features[0]
    elif bad == "boxes too few":
        boxes = boxes[:2]
    elif bad == "boxes of 5":
        boxes = np.zeros((3, 5), np.float32)
    elif bad == "int32 batch_index":
        batch_index = batch_index.astype(np.int32)
    elif bad == "batch_index too long":
        batch_index = np.zeros(4, np.intp)
    elif bad == "paused list too short":
        paused = np.zeros(2, np.intp)  # room for one thread's item needs 3
    elif bad == "paused list corrupt":
        paused = np.array([5, 0, 0], np.intp)  # 5 paused items in room for one
    else:
        out = np.full((3, 3, 2, 2), 7, np.float32)
    with pytest.raises((ValueError, BufferError), match="internal error|contiguous|ndarray is not"):
        kernel(*_kernel_arguments(features, boxes, batch_index, out, paused))
    assert (out == 7).all()
