"""`out=` writes in place and returns `out`; no boxes or no channels give empty results."""

import numpy as np
import pytest
from roi_inputs import random_boxes, to_layout

from roialign_cy import roi_align

DTYPES = [np.float16, np.float32, np.float64]
LAYOUTS = ["NCHW", "NHWC"]


def make_inputs(dtype, layout):
    """Random (2, 3, 8, 6) features in `layout` and 9 boxes."""
    rng = np.random.default_rng(1)
    features = to_layout(rng.uniform(-1, 1, (2, 3, 8, 6)).astype(dtype), layout)
    return features, random_boxes(rng, 2, 8, 6, 1.0, n_boxes=9)


def out_shape(k, layout):
    """Result shape of k boxes, 3 channels, 4x5 bins."""
    return (k, 3, 4, 5) if layout == "NCHW" else (k, 4, 5, 3)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_out_contiguous(dtype, layout):
    features, boxes = make_inputs(dtype, layout)
    expected = roi_align(features, boxes, (4, 5), 1.0, 2, layout=layout)
    out = np.full(out_shape(len(boxes), layout), np.nan, dtype=dtype)
    result = roi_align(features, boxes, (4, 5), 1.0, 2, layout=layout, out=out)
    assert result is out
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_out_non_contiguous_leaves_the_gaps_alone(dtype, layout):
    features, boxes = make_inputs(dtype, layout)
    expected = roi_align(features, boxes, (4, 5), 1.0, 2, layout=layout)
    shape = out_shape(len(boxes), layout)
    buffer = np.full(shape[:-1] + (2 * shape[-1],), -7, dtype=dtype)
    out = buffer[..., ::2]
    assert roi_align(features, boxes, (4, 5), 1.0, 2, layout=layout, out=out) is out
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(buffer[..., 1::2], -7)


def test_out_big_endian_and_fortran():
    features, boxes = make_inputs(np.float32, "NCHW")
    expected = roi_align(features, boxes, (4, 5), 1.0, 2)
    for out in (np.zeros(out_shape(len(boxes), "NCHW"), dtype=">f4"),
                np.zeros(out_shape(len(boxes), "NCHW"), dtype=np.float32, order="F")):
        assert roi_align(features, boxes, (4, 5), 1.0, 2, out=out) is out
        np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("boxes", [np.zeros((0, 5)), [np.zeros((0, 4)), np.zeros((0, 4))]],
                         ids=["k5", "list"])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_no_boxes_give_an_empty_result(dtype, layout, boxes):
    features, _ = make_inputs(dtype, layout)
    result = roi_align(features, boxes, (4, 5), 1.0, layout=layout)
    assert result.shape == out_shape(0, layout) and result.dtype == dtype
    out = np.empty(out_shape(0, layout), dtype=dtype)
    assert roi_align(features, boxes, (4, 5), 1.0, layout=layout, out=out) is out


@pytest.mark.parametrize("layout", LAYOUTS)
def test_no_channels_give_an_empty_result(layout):
    features = np.zeros((1, 0, 5, 5)) if layout == "NCHW" else np.zeros((1, 5, 5, 0))
    result = roi_align(features, np.array([[0, 1.0, 1.0, 3.0, 3.0]]), 2, layout=layout)
    assert result.shape == ((1, 0, 2, 2) if layout == "NCHW" else (1, 2, 2, 0))
