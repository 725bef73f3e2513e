"""The one home for threads: results are bit-identical for any thread count (every function,
both kernel variants), concurrent calls from Python threads give the serial results, a
fork does not hang, and show_config reports the build."""

import os
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from roi_inputs import random_boxes, to_layout

import roialign_cy
from roialign_cy import (
    RoIAlign,
    _roi_align,
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


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
@pytest.mark.parametrize("allowed", [False, True])
def test_forked_child_runs_serially_unless_allowed(allowed, monkeypatch):
    """A child forked after any library's OpenMP team (here: none of ours needed) runs on one
    thread under GNU libgomp, unless ROIALIGN_CY_THREADS_AFTER_FORK=1 allows a team."""
    from roialign_cy import _plan, _runtime

    monkeypatch.setenv("ROIALIGN_CY_THREADS_AFTER_FORK", "1" if allowed else "")
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its team size for a big call, then leave at once
        try:
            os.write(write, str(_plan.team_size(4, 1 << 24)).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        child_team = int(pipe.read())
    os.waitpid(pid, 0)
    parent_team = _plan.team_size(4, 1 << 24)
    if _runtime.GNU_OPENMP and not allowed:
        assert child_team == 1
    else:
        assert child_team == parent_team
    assert parent_team == min(4, _plan.USABLE_CPUS) if _runtime.OPENMP_ENABLED else 1


def test_team_is_capped_at_the_usable_cpus():
    from roialign_cy import _plan, _runtime

    if not _runtime.OPENMP_ENABLED:
        pytest.skip("serial build")
    assert _plan.team_size(1000, 1 << 30) == _plan.USABLE_CPUS
    assert _plan.team_size(None, 1 << 30) <= _plan.USABLE_CPUS


# NumPy 2.5 deprecates setting .shape: the very thing a careless caller does here
@pytest.mark.filterwarnings("ignore:Setting the shape:DeprecationWarning")
def test_caller_rewriting_its_arrays_during_calls_cannot_crash():
    """Another Python thread rewrites the arg-max indices (to out-of-range values) and
    reshapes the features while calls run: every call either completes or raises a clean
    exception; nothing is written outside the output (the kernels read private views and
    check each index where they use it)."""
    import threading

    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 8, 30, 30)).astype(np.float32)
    boxes = random_boxes(rng, 2, 30, 30, 1.0, n_boxes=200)
    pooled, argmax = roi_pool(x, boxes, 7, return_argmax=True)
    grad = np.ones_like(pooled)
    stop = threading.Event()

    def vandal():
        flat_x = x.reshape(-1)
        while not stop.is_set():
            argmax[...] = 2**30           # far outside every channel plane
            argmax[...] = -2**30
            try:
                x.shape = (2, 8, 900)     # NumPy refuses while views exist, or applies it
                x.shape = (2, 8, 30, 30)
            except (AttributeError, ValueError):
                pass
            flat_x[::97] = np.nan

    worker = threading.Thread(target=vandal)
    worker.start()
    try:
        for _ in range(200):
            for call in (lambda: roi_pool_backward(grad, boxes, x, 7, argmax=argmax),
                         lambda: roi_align(x, boxes, 7, num_threads=2)):
                try:
                    call()
                except ValueError:
                    pass  # validation saw the vandal's values: a clean refusal
    finally:
        stop.set()
        worker.join()
