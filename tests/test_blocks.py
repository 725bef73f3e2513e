"""The channel-block kernels move data through transposes (4 x 4 SSE tiles plus edges):
for every shape of edge, they must give the per-RoI kernels' numbers bit for bit."""

import numpy as np
import pytest
from roi_inputs import random_boxes

from roialign_cy import _strategy, roi_align, roi_align_backward, roi_pool, roi_pool_backward


def _both_kernels(monkeypatch, call):
    """call() with the per-RoI kernels, then with the channel-block kernels."""
    results = []
    for blocked in (False, True):
        monkeypatch.setattr(_strategy, "use_channel_blocks", lambda *args, b=blocked: b)
        results.append(call())
    return results


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("channels", [1, 3, 4, 5, 17])
@pytest.mark.parametrize("output_size", [(1, 1), (2, 3), (4, 4), (3, 5), (7, 7)])
def test_blocked_equals_per_roi_for_every_edge(monkeypatch, output_size, channels, dtype):
    rng = np.random.default_rng(channels * 100 + output_size[0] * 10 + output_size[1])
    features = rng.standard_normal((2, channels, 11, 13)).astype(dtype)
    boxes = random_boxes(rng, 2, 11, 13, 0.5, n_boxes=30)
    args = (boxes, output_size, 0.5)
    grad = rng.standard_normal(roi_align(features, *args).shape).astype(dtype)
    calls = {
        "forward": lambda: roi_align(features, *args, 2, True),
        "backward": lambda: roi_align_backward(grad, boxes, features.shape, output_size, 0.5,
                                               2, True),
        "pool": lambda: roi_pool(features, *args, return_argmax=True),
        "pool_backward": lambda: roi_pool_backward(grad, boxes, features, output_size, 0.5),
    }
    for name, call in calls.items():
        per_roi, blocked = _both_kernels(monkeypatch, call)
        if name == "pool":
            np.testing.assert_array_equal(blocked[1], per_roi[1], err_msg="pool argmax")
            per_roi, blocked = per_roi[0], blocked[0]
        np.testing.assert_array_equal(blocked, per_roi, err_msg=name)
