"""Thread count changes nothing but speed; show_config reports the build."""

import os

import numpy as np
import pytest
from roi_inputs import random_boxes, to_layout

import roialign_cy
from roialign_cy import roi_align


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
