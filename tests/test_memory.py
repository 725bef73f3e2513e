"""No leaks: resident memory stays flat over 10,000 calls of every entry point.

Each call allocates a result, per-thread sample tables and (for odd inputs) canonical
copies; a leak of any of them, or of a memoryview or a reference on an error path, grows
the resident set by at least hundreds of bytes a call, i.e. megabytes over 10,000 calls.
RSS is read from /proc/self/statm after a warm-up (Linux only).
"""

import gc
import os
import sys

import numpy as np
import pytest

from roialign_cy import RoIAlign, RoIPool, roi_align, roi_align_backward, roi_pool
from roialign_cy import roi_pool_backward

pytestmark = pytest.mark.skipif(not os.path.exists("/proc/self/statm"),
                                reason="RSS is read from /proc/self/statm (Linux)")

CALLS = 10_000  # per entry point and variant
WARMUP = 500
SLACK_MIB = 8.0


def rss_mib():
    """Resident set size of this process in MiB."""
    with open("/proc/self/statm") as f:
        resident_pages = int(f.read().split()[1])
    return resident_pages * os.sysconf("SC_PAGE_SIZE") / 2**20


rng = np.random.default_rng(0)
FEATURES = rng.standard_normal((2, 3, 8, 9)).astype(np.float32)
FEATURES_NHWC_F16 = np.ascontiguousarray(FEATURES.transpose(0, 2, 3, 1)).astype(np.float16)
FEATURES_ODD = np.asfortranarray(FEATURES.astype(">f8"))  # needs a canonical copy each call
BOXES = np.array([[0, 0.5, 0.5, 6.0, 5.0], [1, -2.0, 1.0, 30.0, 4.0], [1, 3.0, 3.0, 2.0, 2.0]])
BOX_LIST = [BOXES[:1, 1:], BOXES[1:, 1:]]
GRAD = rng.standard_normal((3, 3, 2, 2)).astype(np.float32)
OUT = np.empty((3, 3, 2, 2), np.float32)
GRAD_OUT = np.empty(FEATURES.shape, np.float32)
BAD_BOXES = BOXES.copy()
BAD_BOXES[1, 2] = np.nan


def _refused():
    try:
        roi_align(FEATURES, BAD_BOXES, 2)
    except ValueError:
        pass


CALLERS = {
    "roi_align": lambda: roi_align(FEATURES, BOXES, 2, sampling_ratio=-1, aligned=True),
    "roi_align-max-nhwc-f16-list": lambda: roi_align(FEATURES_NHWC_F16, BOX_LIST, 2,
                                                     mode="max", layout="NHWC"),
    "roi_align-copied-input-out": lambda: roi_align(FEATURES_ODD.astype(np.float32, order="F"),
                                                    BOXES, 2, out=OUT),
    "roi_align_backward": lambda: roi_align_backward(GRAD, BOXES, FEATURES.shape, 2),
    "roi_align_backward-max-out": lambda: roi_align_backward(
        GRAD, BOXES, FEATURES.shape, 2, mode="max", input=FEATURES, out=GRAD_OUT),
    "roi_pool": lambda: roi_pool(FEATURES_ODD, BOXES, 2),
    "roi_pool_backward": lambda: roi_pool_backward(GRAD, BOXES, FEATURES, 2),
    "RoIAlign": lambda: RoIAlign(2, 0.5, 2)(FEATURES, BOXES),
    "RoIPool.backward": lambda: RoIPool(2).backward(GRAD, BOXES, FEATURES),
    "refused-call": _refused,
}


@pytest.mark.parametrize("name", list(CALLERS))
def test_rss_flat_over_many_calls(name, capsys):
    call = CALLERS[name]
    n_calls = CALLS
    for _ in range(WARMUP):
        call()
    gc.collect()
    before = rss_mib()
    for _ in range(n_calls):
        call()
    gc.collect()
    growth = rss_mib() - before
    with capsys.disabled():
        print(f"\n{name}: RSS growth over {n_calls} calls: {growth:+.2f} MiB")
    assert growth < SLACK_MIB, f"{name}: RSS grew {growth:.1f} MiB over {n_calls} calls"


def test_big_call_memory_is_returned():
    """A call with large per-thread tables (long boxes, many bins) frees them afterwards."""
    features = np.zeros((1, 4, 64, 64), np.float32)
    boxes = np.array([[0, -2000.0, -2000.0, 2000.0, 2000.0]] * 4)
    roi_align(features, boxes, 64, sampling_ratio=8)
    gc.collect()
    before = rss_mib()
    for _ in range(20):
        roi_align(features, boxes, 64, sampling_ratio=8)
    gc.collect()
    assert rss_mib() - before < SLACK_MIB


def test_refcounts_of_arguments_unchanged():
    """No call keeps a reference to its arguments (a leak the RSS would barely show)."""
    if not hasattr(sys, "getrefcount"):
        pytest.skip("sys.getrefcount unavailable")
    before = [sys.getrefcount(a) for a in (FEATURES, BOXES, GRAD, OUT)]
    for _ in range(100):
        roi_align(FEATURES, BOXES, 2, out=OUT)
        roi_align_backward(GRAD, BOXES, FEATURES.shape, 2, mode="max", input=FEATURES)
        roi_pool_backward(GRAD, BOXES, FEATURES, 2)
        _refused()
    assert [sys.getrefcount(a) for a in (FEATURES, BOXES, GRAD, OUT)] == before
