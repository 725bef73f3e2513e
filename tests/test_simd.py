"""The AVX2 build of the kernels gives the baseline build's numbers, bit for bit.

The rest of the suite runs whichever build this CPU selects (the AVX2 one where it can);
here every public function runs with each build forced in turn, through both kernel
variants (per RoI and channel blocks), and the results must be identical.
"""

import importlib
import os
import subprocess
import sys

import numpy as np
import pytest
from roi_inputs import random_boxes, to_layout

from roialign_cy import _simd, _strategy, roi_align, roi_align_backward, roi_pool
from roialign_cy import roi_pool_backward


def _avx2_modules():
    try:
        return (importlib.import_module("roialign_cy._kernels_avx2"),
                importlib.import_module("roialign_cy._pool_kernels_avx2"))
    except ImportError:
        return None


AVX2 = _avx2_modules()
needs_avx2 = pytest.mark.skipif(
    AVX2 is None or not _simd._kernels.cpu_has_avx2(),
    reason="no AVX2 build here, or a CPU without AVX2",
)


def _run_each_build(monkeypatch, call):
    """call() with the baseline kernels, then with the AVX2 kernels."""
    results = []
    for kernels, pool_kernels in ((_simd._kernels, _simd._pool_kernels), AVX2):
        monkeypatch.setattr(_simd, "kernels", kernels)
        monkeypatch.setattr(_simd, "pool_kernels", pool_kernels)
        results.append(call())
    return results


@needs_avx2
@pytest.mark.parametrize("blocked", [False, True], ids=["per_roi", "blocked"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_every_function_matches_between_builds(monkeypatch, layout, dtype, blocked):
    monkeypatch.setattr(_strategy, "use_channel_blocks", lambda *args: blocked)
    rng = np.random.default_rng(31)
    # 37 channels: a full 256-bit stretch, a 128-bit one and a scalar tail in every loop.
    features = to_layout(rng.standard_normal((2, 37, 19, 23)).astype(dtype), layout)
    boxes = random_boxes(rng, 2, 19, 23, 0.5, n_boxes=60)
    args = (boxes, (5, 4), 0.5)
    grad = rng.standard_normal(roi_align(features, *args, 2, layout=layout).shape).astype(dtype)
    calls = {
        "avg": lambda: roi_align(features, *args, 2, True, layout=layout),
        "max": lambda: roi_align(features, *args, -1, False, layout=layout, mode="max"),
        "backward": lambda: roi_align_backward(grad, boxes, features.shape, (5, 4), 0.5, 2,
                                               True, layout=layout),
        "max_backward": lambda: roi_align_backward(grad, boxes, features.shape, (5, 4), 0.5,
                                                   -1, False, layout=layout, mode="max",
                                                   input=features),
        "pool": lambda: roi_pool(features, *args, layout=layout),
        "pool_backward": lambda: roi_pool_backward(grad, boxes, features, (5, 4), 0.5,
                                                   layout=layout),
    }
    for name, call in calls.items():
        baseline, avx2 = _run_each_build(monkeypatch, call)
        np.testing.assert_array_equal(avx2, baseline, err_msg=name)


def test_baseline_can_be_forced():
    """ROIALIGN_CY_SIMD=baseline selects the baseline build whatever the CPU."""
    code = "from roialign_cy import _simd; print(_simd.name, _simd.kernels.__name__)"
    env_run = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True,
        env={**os.environ, "ROIALIGN_CY_SIMD": "baseline"},
    )
    assert env_run.stdout.split() == ["baseline", "roialign_cy._kernels"]


def test_selected_build_is_reported():
    expected = "avx2" if AVX2 is not None and _simd._kernels.cpu_has_avx2() else "baseline"
    assert _simd.name == expected
    assert _simd.kernels.__name__ == ("roialign_cy._kernels_avx2" if expected == "avx2"
                                      else "roialign_cy._kernels")
