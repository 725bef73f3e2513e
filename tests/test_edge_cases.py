"""Boxes at and beyond the edges: outside, tiny, inverted, huge, and NaN features."""

import numpy as np
import pytest
from reference import reference_roi_align
from roi_inputs import align_nchw

DTYPES = [np.float32, np.float64]
LAYOUTS = ["NCHW", "NHWC"]
MODES = ["avg", "max"]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("sampling_ratio", [2, -1])
@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
def test_boxes_fully_outside_give_zero(dtype, aligned, sampling_ratio, mode):
    features = np.random.default_rng(3).uniform(1, 2, (1, 3, 6, 8)).astype(dtype)
    boxes = np.array([[0, -20.0, -20.0, -3.0, -4.0], [0, 12.0, 1.0, 30.0, 5.0],
                      [0, 1.0, 9.0, 7.0, 40.0], [0, 9.5, 7.5, 9.5, 7.5]])
    got = align_nchw(features, boxes, 3, 1.0, sampling_ratio, aligned, mode=mode)
    np.testing.assert_array_equal(got, 0)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_nan_at_origin_does_not_leak(dtype, layout, mode):
    """torchvision multiplies X[0, 0] by 0 for outside samples; we never read it for them."""
    features = np.random.default_rng(4).uniform(-1, 1, (2, 2, 8, 8)).astype(dtype)
    features[0, :, 0, 0] = np.nan
    boxes = np.array([
        [0, -10.0, -10.0, -5.0, -5.0],   # fully outside
        [0, 5.0, 5.0, 20.0, 20.0],       # partly outside, far from the origin
        [0, -20.0, 3.0, 6.0, 6.0],       # partly outside, inside samples in rows >= 3
        [1, -3.0, -3.0, 2.0, 2.0],       # image 1 has no NaN
        [0, 0.0, 0.0, 2.0, 2.0],         # really samples the NaN
    ])
    got = align_nchw(features, boxes, 2, 1.0, 2, False, layout=layout, mode=mode)
    assert np.isfinite(got[:4]).all()
    assert np.isnan(got[4, :, 0, 0]).all()
    expected = reference_roi_align(features, boxes, 2, 1.0, 2, False, mode)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
def test_huge_boxes_with_adaptive_grid_return(dtype, aligned, mode):
    """A 1e30-pixel box would take forever if every sample were visited; inside ones only are."""
    features = np.random.default_rng(5).uniform(0, 1, (1, 2, 6, 7)).astype(dtype)
    boxes = np.array([[0, 0.0, 0.0, 1e30, 4.0], [0, -1e30, -1e30, 1e30, 1e30],
                      [0, 2.0, -1e30, 5.0, 6.0]])
    got = align_nchw(features, boxes, 7, 1.0, -1, aligned, mode=mode)
    assert np.isfinite(got).all()
    if mode == "avg":  # a few samples out of ~1e29 per bin: the mean is about 0
        assert np.abs(got).max() < 1e-20
    else:  # the max of values in [0, 1] and zeros
        assert ((got >= 0) & (got <= 1)).all()


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_empty_adaptive_grid_gives_zero(layout, mode):
    """Aligned zero-size or one-axis-inverted boxes have no samples (torchvision crashes)."""
    features = -np.random.default_rng(6).uniform(1, 2, (1, 2, 6, 6))
    boxes = np.array([[0, 2.0, 2.0, 2.0, 2.0], [0, 4.0, 1.0, 2.0, 5.0], [0, 1.0, 5.0, 4.0, 2.0]])
    got = align_nchw(features, boxes, 2, 1.0, 0, True, layout=layout, mode=mode)
    np.testing.assert_array_equal(got, 0)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_max_mode_counts_outside_samples_as_zero(layout):
    features = -np.random.default_rng(8).uniform(1, 2, (1, 3, 6, 6))
    inside = align_nchw(features, np.array([[0, 1.0, 1.0, 4.0, 4.0]]), 2, 1.0, 2, False,
                        layout=layout, mode="max")
    assert (inside < -1).all()
    # x from -6 to 4: the left bin's samples are all outside, the right bin's all inside
    half = align_nchw(features, np.array([[0, -6.0, 1.0, 4.0, 4.0]]), (1, 2), 1.0, 2, False,
                      layout=layout, mode="max")
    np.testing.assert_array_equal(half[..., 0], 0)
    assert (half[..., 1] < -1).all()
    # one bin, samples at x = -2 (outside) and x = 2 (inside): the outside 0 is the max
    mixed = align_nchw(features, np.array([[0, -4.0, 1.0, 4.0, 4.0]]), 1, 1.0, 2, False,
                       layout=layout, mode="max")
    np.testing.assert_array_equal(mixed, 0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_legacy_mode_stretches_tiny_boxes_to_one_pixel(dtype):
    features = np.random.default_rng(9).uniform(-1, 1, (1, 2, 7, 7)).astype(dtype)
    tiny = np.array([[0, 2.25, 3.5, 2.25, 3.5], [0, 2.25, 3.5, 2.5, 3.75]])
    one_pixel = np.array([[0, 2.25, 3.5, 3.25, 4.5], [0, 2.25, 3.5, 3.25, 4.5]])
    np.testing.assert_array_equal(align_nchw(features, tiny, 3, 1.0, 2, False),
                                  align_nchw(features, one_pixel, 3, 1.0, 2, False))


@pytest.mark.parametrize("dtype", DTYPES)
def test_aligned_is_a_half_pixel_shift(dtype):
    features = np.random.default_rng(10).uniform(-1, 1, (1, 2, 9, 9)).astype(dtype)
    boxes = np.array([[0, 1.25, 2.0, 6.5, 7.75], [0, -2.0, 3.5, 4.0, 12.0]])
    shifted = boxes + [0, 0.5, 0.5, 0.5, 0.5]
    np.testing.assert_array_equal(align_nchw(features, shifted, 4, 1.0, 2, True),
                                  align_nchw(features, boxes, 4, 1.0, 2, False))


@pytest.mark.parametrize("dtype", DTYPES)
def test_spatial_scale_scales_the_boxes(dtype):
    features = np.random.default_rng(11).uniform(-1, 1, (1, 2, 9, 9)).astype(dtype)
    boxes = np.array([[0, 4.0, 2.0, 13.0, 15.5], [0, -6.0, 3.0, 10.0, 24.0]])
    scaled = boxes * [1, 0.25, 0.25, 0.25, 0.25]
    for aligned in (False, True):
        np.testing.assert_array_equal(align_nchw(features, boxes, 3, 0.25, -1, aligned),
                                      align_nchw(features, scaled, 3, 1.0, -1, aligned))
