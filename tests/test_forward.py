"""roi_align's numbers against the loop reference, torchvision's golden data, hand values."""

import numpy as np
import pytest
from golden import case_names, load_case, load_meta
from reference import reference_roi_align
from roi_inputs import align_nchw, random_boxes

from roialign_cy import roi_align

DTYPES = [np.float32, np.float64]
LAYOUTS = ["NCHW", "NHWC"]
ATOL = {np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-12}
# (spatial_scale, output_size) triples each random test runs through
GEOMETRIES = [(1.0, (4, 4)), (0.5, (3, 5)), (1 / 16, (2, 3))]


def assert_close(actual, expected, dtype):
    """|actual - expected| <= the dtype's tolerance everywhere (NaN only where expected NaN)."""
    np.testing.assert_allclose(actual, expected, rtol=0, atol=ATOL[np.dtype(dtype)])


@pytest.mark.parametrize("mode", ["avg", "max"])
@pytest.mark.parametrize("sampling_ratio", [1, 2, 0, -1])
@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_matches_reference(dtype, layout, aligned, sampling_ratio, mode):
    seed = [dtype == np.float32, layout == "NHWC", aligned, sampling_ratio + 1, mode == "max"]
    rng = np.random.default_rng(seed)
    for scale, size in GEOMETRIES:
        height, width = rng.integers(5, 13, size=2)
        features = rng.uniform(-1, 1, (3, 2, height, width)).astype(dtype)
        boxes = random_boxes(rng, 3, height, width, scale, n_boxes=14)
        got = align_nchw(features, boxes, size, scale, sampling_ratio, aligned,
                         layout=layout, mode=mode)
        expected = reference_roi_align(features, boxes, size, scale, sampling_ratio, aligned, mode)
        assert got.dtype == dtype
        assert_close(got, expected, dtype)


LARGE_GRIDS = {
    # more than 64 samples per bin: the kernel then looks for the inside samples analytically
    "fixed_70": (70, [[0, 1.0, 1.0, 6.0, 5.0], [0, -30.0, -20.0, 5.0, 7.0],
                      [1, 6.5, 5.0, 2.0, 1.5], [1, 9.0, 2.0, 40.0, 3.0]]),
    "adaptive_huge": (-1, [[0, -300.0, 1.0, 400.0, 6.0], [1, 2.0, -250.0, 7.0, 180.0],
                           [1, -500.0, -3.0, -2.0, 4.0]]),
}


@pytest.mark.parametrize("mode", ["avg", "max"])
@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("grid", sorted(LARGE_GRIDS))
def test_large_grids_match_reference(grid, layout, aligned, mode):
    sampling_ratio, boxes = LARGE_GRIDS[grid]
    features = np.random.default_rng(7).uniform(-1, 1, (2, 2, 8, 10))
    got = align_nchw(features, np.array(boxes), (2, 1), 1.0, sampling_ratio, aligned,
                     layout=layout, mode=mode)
    expected = reference_roi_align(features, boxes, (2, 1), 1.0, sampling_ratio, aligned, mode)
    assert_close(got, expected, np.float64)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("name", case_names("roi_align"))
def test_matches_torchvision_golden(name, layout):
    params, arrays = load_case(name)
    features, expected = arrays["input"], arrays["output"]
    got = align_nchw(features, arrays["boxes"], tuple(params["output_size"]),
                     params["spatial_scale"], params["sampling_ratio"], params["aligned"],
                     layout=layout)
    assert got.dtype == features.dtype == expected.dtype
    assert got.shape == expected.shape
    assert_close(got, expected, features.dtype)


def test_golden_file_is_complete():
    meta = load_meta()
    assert meta["torch"] and meta["torchvision"]
    ops = {"roi_align", "roi_align_backward", "roi_pool", "roi_pool_backward"}
    assert {case["op"] for case in meta["cases"]} == ops
    for case in meta["cases"]:
        _, arrays = load_case(case["name"])
        assert {"input", "boxes", "output"} <= set(arrays)
        assert arrays["input"].dtype == np.dtype(case["dtype"])
        if case["op"].endswith("_backward"):
            assert arrays["grad_output"].shape == arrays["output"].shape
            assert arrays["grad_input"].shape == arrays["input"].shape


def test_seed_notebook_example():
    features = np.arange(100, dtype=np.float32).reshape(2, 5, 5, 2)[1]
    boxes = np.array([[1.0, 4.0, 4.0, 4.0]])
    got = roi_align(features, boxes, output_size=4, spatial_scale=1.0, sampling_ratio=2,
                    aligned=False, layout="NHWC")
    row = np.array([[92.75, 93.75], [94.25, 95.25], [95.75, 96.75], [97.25, 98.25]])
    assert got.shape == (1, 4, 4, 2) and got.dtype == np.float32
    for ph in range(4):
        np.testing.assert_array_equal(got[0, ph], row)


@pytest.mark.parametrize("dtype", DTYPES)
def test_linear_ramp_is_interpolated_exactly(dtype):
    """On a plane a*x + b*y + c every bin of an inside box equals the plane at the bin centre."""
    height, width = 9, 12
    y, x = np.mgrid[0:height, 0:width]
    features = (0.25 * x - 0.5 * y + 3.0).astype(dtype)[np.newaxis, np.newaxis]
    x1, y1, x2, y2 = 1.25, 2.5, 9.75, 7.0
    got = align_nchw(features, np.array([[0, x1, y1, x2, y2]]), (3, 4), 1.0, 3, True)
    start_x, start_y, bin_w, bin_h = x1 - 0.5, y1 - 0.5, (x2 - x1) / 4, (y2 - y1) / 3
    centre_x = start_x + (np.arange(4) + 0.5) * bin_w
    centre_y = start_y + (np.arange(3) + 0.5) * bin_h
    expected = 0.25 * centre_x[np.newaxis, :] - 0.5 * centre_y[:, np.newaxis] + 3.0
    assert_close(got[0, 0], expected, dtype)
