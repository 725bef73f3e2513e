"""roi_align(mode="max") against the loop reference: random cases, outside bins, the 0 sample, ties.

Max mode (mmcv/Chainer): the maximum of the bin's bilinearly interpolated samples; a sample
outside [-1, H] x [-1, W] has value 0 and takes part; an empty sample grid gives 0.
"""

import numpy as np
import pytest
from reference import reference_roi_align
from roi_inputs import align_nchw, random_boxes, to_layout, to_nchw

from roialign_cy import _strategy, roi_align

LAYOUTS = ["NCHW", "NHWC"]
DTYPES = [np.float32, np.float64]
# (spatial_scale, output_size, sampling_ratio, aligned)
CONFIGS = [
    (1.0, (3, 3), 2, False),
    (1.0, (2, 4), -1, True),
    (0.5, (4, 3), 0, False),
    (0.25, (3, 2), 3, True),
]


@pytest.fixture(params=["per_roi", "blocked"])
def forward_path(request, monkeypatch):
    """Force roi_align onto one forward kernel: per RoI, or channel blocks per image.

    The package picks one by a size heuristic (the private _strategy.use_channel_blocks);
    both must give the same numbers, so the reference tests go through each.
    """
    blocked = request.param == "blocked"
    monkeypatch.setattr(_strategy, "use_channel_blocks", lambda *args: blocked)
    return request.param


def tolerance(dtype):
    """assert_allclose keywords for comparing a result of `dtype` with the float64 reference."""
    if dtype == np.float32:
        return dict(rtol=1e-5, atol=2e-5)
    return dict(rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("config", CONFIGS)
def test_max_matches_reference(forward_path, config, dtype, layout):
    """Random features and a mix of ordinary, outside, tiny and inverted boxes."""
    scale, size, sr, aligned = config
    rng = np.random.default_rng([CONFIGS.index(config), DTYPES.index(dtype)])
    height, width = int(rng.integers(7, 12)), int(rng.integers(7, 12))
    features = rng.standard_normal((2, 3, height, width)).astype(dtype)
    boxes = random_boxes(rng, 2, height, width, scale, n_boxes=14).astype(dtype)
    got = align_nchw(features, boxes, size, scale, sr, aligned, layout=layout, mode="max")
    expected = reference_roi_align(features, boxes, size, scale, sr, aligned, mode="max")
    assert got.dtype == dtype
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, **tolerance(dtype))


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_max_of_boxes_fully_outside_is_zero(forward_path, dtype, layout):
    """Every sample outside: the bins are exactly 0, even over negative or NaN features."""
    features = np.full((1, 2, 6, 7), -3.0, dtype=dtype)
    features[0, 1] = np.nan  # nothing outside the map may be read, so NaN cannot leak in
    boxes = np.array([
        [0, 20.0, 20.0, 30.0, 28.0],     # below-right
        [0, -30.0, -25.0, -5.0, -2.5],   # above-left
        [0, -20.0, 1.0, -1.5, 4.0],      # left only, rows inside
        [0, 1.0, 7.5, 5.0, 40.0],        # below only, columns inside
    ], dtype=dtype)
    for sr, aligned in [(2, False), (-1, True), (-1, False)]:
        got = align_nchw(features, boxes, (3, 2), 1.0, sr, aligned, layout=layout, mode="max")
        assert got.dtype == dtype
        np.testing.assert_array_equal(got, 0)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_outside_zero_sample_beats_negative_values(forward_path, dtype, layout):
    """Boxes partly outside over negative features: bins with an outside sample give 0.

    On the constant map -1 an inside sample is -1 and an outside one 0. Bins mixing both
    (their avg-mode reference lies strictly between -1 and 0) must give exactly 0 in max mode;
    the boxes are built so that such bins occur next to fully inside and fully outside ones.
    """
    features = np.full((1, 1, 8, 8), -1.0, dtype=dtype)
    # x bins [-3, 1] (samples -2 out, 0 in) and [1, 5]; y bins [-2.5, 1.75] (one sample out)
    # and [1.75, 6]; the second box's x bins are [3, 7] and [7, 11] (samples 8 in, 10 out).
    boxes = np.array([[0, -3.0, -2.5, 5.0, 6.0], [0, 3.0, 2.0, 11.0, 7.3],
                      [0, -9.0, 1.0, -5.0, 3.0]], dtype=dtype)
    got = align_nchw(features, boxes, (2, 2), 1.0, 2, False, layout=layout, mode="max")
    expected = reference_roi_align(features, boxes, (2, 2), 1.0, 2, False, mode="max")
    mean = reference_roi_align(features, boxes, (2, 2), 1.0, 2, False, mode="avg")
    mixed = (mean > -1) & (mean < 0)
    assert mixed.sum() >= 4 and (mean == -1).any() and (mean == 0).any()  # the premise
    np.testing.assert_array_equal(got[mixed], 0)
    np.testing.assert_array_equal(got[mean == 0], 0)
    np.testing.assert_allclose(got[mean == -1], -1, rtol=1e-6)
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=0)

    # Random negative features: the 0 still wins where the reference says so.
    rng = np.random.default_rng(7)
    features = (-1.0 - rng.random((1, 2, 8, 8))).astype(dtype)
    got = align_nchw(features, boxes, (4, 4), 1.0, 2, False, layout=layout, mode="max")
    expected = reference_roi_align(features, boxes, (4, 4), 1.0, 2, False, mode="max")
    np.testing.assert_allclose(got, expected, **tolerance(dtype))
    assert (got == 0).any() and (got < -1).any()


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("value", [2.5, -0.75])
def test_constant_map_ties(forward_path, value, dtype, layout):
    """A constant map: every inside sample ties; the max is the constant (0 where it loses)."""
    features = np.full((2, 3, 9, 10), value, dtype=dtype)
    rng = np.random.default_rng(11)
    boxes = random_boxes(rng, 2, 9, 10, 1.0, n_boxes=14).astype(dtype)
    for sr, aligned in [(2, False), (-1, True)]:
        got = align_nchw(features, boxes, (3, 3), 1.0, sr, aligned, layout=layout, mode="max")
        expected = reference_roi_align(features, boxes, (3, 3), 1.0, sr, aligned, mode="max")
        np.testing.assert_allclose(got, expected, rtol=1e-6, atol=0)
        at_value = np.isclose(got, value, rtol=1e-6, atol=0)
        assert np.all(at_value | (got == 0))
        assert at_value.any() and (got == 0).any()  # both inside bins and losing/outside ones


@pytest.mark.parametrize("layout", LAYOUTS)
def test_empty_grid_gives_zero(forward_path, layout):
    """aligned=True, adaptive grid and an inverted box: no samples at all, so 0 (not -inf)."""
    features = np.full((1, 2, 6, 6), -4.0)
    boxes = np.array([[0, 4.0, 1.0, 2.0, 5.0],    # inverted along x only
                      [0, 1.0, 5.0, 4.0, 2.0]])   # inverted along y only
    got = align_nchw(features, boxes, (2, 2), 1.0, -1, True, layout=layout, mode="max")
    np.testing.assert_array_equal(got, 0)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("sr", [70, -1])
def test_max_with_large_grids(forward_path, sr, layout):
    """More than 64 samples per bin (fixed 70, or adaptive over a huge box) still match."""
    rng = np.random.default_rng(3)
    features = rng.standard_normal((1, 2, 6, 7)) - 0.5
    boxes = np.array([
        [0, -150.0, 1.0, 160.0, 4.5],   # adaptive: ~100 samples per bin along x
        [0, 1.5, -120.0, 5.0, 130.0],   # and along y
        [0, 0.5, 0.5, 5.5, 4.0],
    ])
    if sr > 0:
        boxes = boxes[2:]  # 70 x 70 samples per bin is enough for the reference
    got = align_nchw(features, boxes, (2, 3), 1.0, sr, False, layout=layout, mode="max")
    expected = reference_roi_align(features, boxes, (2, 3), 1.0, sr, False, mode="max")
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("config", CONFIGS)
def test_max_is_at_least_avg(config, layout):
    """max over the samples >= their mean (outside samples count as 0 in both)."""
    scale, size, sr, aligned = config
    rng = np.random.default_rng(100 + CONFIGS.index(config))
    features = rng.standard_normal((2, 3, 10, 9))
    boxes = random_boxes(rng, 2, 10, 9, scale, n_boxes=21)
    kwargs = dict(layout=layout)
    peak = align_nchw(features, boxes, size, scale, sr, aligned, mode="max", **kwargs)
    mean = align_nchw(features, boxes, size, scale, sr, aligned, mode="avg", **kwargs)
    assert np.all(peak >= mean - 1e-12)
    assert np.any(peak > mean + 0.1)  # and the two modes really differ


@pytest.mark.parametrize("layout", LAYOUTS)
def test_nan_sample_wins(forward_path, layout):
    """A NaN tap makes its bins NaN in max mode, and leaves bins that never read it alone."""
    features = np.arange(64, dtype=np.float64).reshape(1, 1, 8, 8)
    features[0, 0, 1, 1] = np.nan
    boxes = np.array([[0, 0.0, 0.0, 8.0, 8.0]])
    got = align_nchw(features, boxes, 4, 1.0, 2, True, layout=layout, mode="max")
    expected = reference_roi_align(features, boxes, 4, 1.0, 2, True, mode="max")
    assert np.isnan(got[0, 0, 0, 0]) and np.isnan(expected[0, 0, 0, 0])
    np.testing.assert_array_equal(np.isnan(got), np.isnan(expected))
    finite = ~np.isnan(expected)
    np.testing.assert_allclose(got[finite], expected[finite], rtol=1e-12)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("mode", ["avg", "max"])
def test_float16_in_float16_out(mode, layout):
    """float16 features give float16 results, computed in float32 then rounded once."""
    rng = np.random.default_rng(5)
    features = rng.standard_normal((2, 3, 8, 9)).astype(np.float16)
    boxes = random_boxes(rng, 2, 8, 9, 1.0, n_boxes=10)
    half = roi_align(to_layout(features, layout), boxes, 3, 1.0, 2, False, layout=layout,
                     mode=mode)
    single = roi_align(to_layout(features.astype(np.float32), layout), boxes, 3, 1.0, 2, False,
                       layout=layout, mode=mode)
    assert half.dtype == np.float16
    np.testing.assert_array_equal(half, single.astype(np.float16))
    expected = reference_roi_align(features.astype(np.float32), boxes, 3, 1.0, 2, False,
                                   mode=mode)
    np.testing.assert_allclose(to_nchw(half, layout), expected, rtol=2e-3, atol=2e-3)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("mode", ["avg", "max"])
def test_no_boxes(mode, layout):
    """K = 0 boxes, as a (0, 5) array or a list of empty per-image arrays: an empty result."""
    features = to_layout(np.ones((2, 3, 5, 6), dtype=np.float32), layout)
    expected_shape = (0, 3, 2, 4) if layout == "NCHW" else (0, 2, 4, 3)
    for boxes in (np.zeros((0, 5)), [np.zeros((0, 4)), np.zeros((0, 4))]):
        got = roi_align(features, boxes, (2, 4), layout=layout, mode=mode)
        assert got.shape == expected_shape
        assert got.dtype == np.float32


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("mode", ["avg", "max"])
@pytest.mark.parametrize("channels", [3, 16, 37])
def test_forward_kernels_bit_identical(channels, mode, layout, monkeypatch):
    """The per-RoI and the channel-block kernels give the same bits (full and partial blocks)."""
    rng = np.random.default_rng(channels)
    features = rng.standard_normal((3, channels, 12, 13)).astype(np.float32)
    boxes = random_boxes(rng, 2, 12, 13, 0.5, n_boxes=30)  # image 2 has no RoI
    results = {}
    for blocked in (False, True):
        monkeypatch.setattr(_strategy, "use_channel_blocks", lambda *args, b=blocked: b)
        results[blocked] = align_nchw(features, boxes, (3, 4), 0.5, -1, True, layout=layout,
                                      mode=mode)
    assert np.array_equal(results[False], results[True])
    expected = reference_roi_align(features, boxes, (3, 4), 0.5, -1, True, mode=mode)
    np.testing.assert_allclose(results[True], expected, rtol=1e-5, atol=2e-5)
