"""Every bad argument raises the right exception, with a message naming the argument."""

import numpy as np
import pytest

from roialign_cy import roi_align

FEATURES = np.zeros((2, 3, 8, 8), dtype=np.float32)
BOXES = np.array([[0, 1.0, 1.0, 5.0, 5.0], [1, 2.0, 2.0, 6.0, 6.0], [0, 0.0, 0.0, 3.0, 3.0],
                  [1, 1.0, 2.0, 3.0, 4.0], [0, 4.0, 4.0, 7.0, 7.0]])


def with_box(row, column, value):
    """BOXES with one entry replaced."""
    boxes = BOXES.copy()
    boxes[row, column] = value
    return boxes


def read_only(array):
    """A read-only copy of array."""
    array = array.copy()
    array.setflags(write=False)
    return array


OVERLAP = np.zeros(2 * 3 * 8 * 8, dtype=np.float32)  # features and out share this memory
OUT = np.zeros((5, 3, 2, 2), dtype=np.float32)

# (id, arguments replacing the valid defaults, exception type, regex the message must match)
BAD_ARGUMENTS = [
    ("input_2d", {"input": np.zeros((8, 8), np.float32)}, ValueError, r"input must be 4-D"),
    ("input_5d", {"input": np.zeros((1, 2, 3, 8, 8), np.float32)}, ValueError,
     r"input must be 4-D"),
    ("input_int", {"input": FEATURES.astype(np.int32)}, TypeError, r"input must be float"),
    ("input_uint8", {"input": FEATURES.astype(np.uint8)}, TypeError, r"input must be float"),
    ("input_complex", {"input": FEATURES.astype(complex)}, TypeError, r"input must be float"),
    ("input_bool", {"input": FEATURES.astype(bool)}, TypeError, r"input must be float"),
    ("input_object", {"input": FEATURES.astype(object)}, TypeError, r"input must be float"),
    ("input_h0", {"input": np.zeros((2, 3, 0, 8), np.float32)}, ValueError, r"input has an empty"),
    ("input_w0", {"input": np.zeros((2, 3, 8, 0), np.float32)}, ValueError, r"input has an empty"),
    ("input_nhwc_h0", {"input": np.zeros((2, 0, 8, 3), np.float32), "layout": "NHWC"},
     ValueError, r"input has an empty"),
    ("layout_lower", {"layout": "nchw"}, ValueError, r"layout must be"),
    ("layout_none", {"layout": None}, ValueError, r"layout must be"),
    ("layout_chw", {"layout": "CHW"}, ValueError, r"layout must be"),
    ("mode_mean", {"mode": "mean"}, ValueError, r"mode must be"),
    ("mode_none", {"mode": None}, ValueError, r"mode must be"),
    ("output_size_0", {"output_size": 0}, ValueError, r"output_size must be >= 1"),
    ("output_size_neg", {"output_size": -3}, ValueError, r"output_size must be >= 1"),
    ("output_size_pair_0", {"output_size": (7, 0)}, ValueError, r"output_size must be >= 1"),
    ("output_size_float", {"output_size": 7.0}, TypeError, r"output_size must be an int"),
    ("output_size_bool", {"output_size": True}, TypeError, r"output_size must be an int"),
    ("output_size_str", {"output_size": "7"}, TypeError, r"output_size must be an int"),
    ("output_size_1", {"output_size": (7,)}, ValueError, r"output_size must be an int or a pair"),
    ("output_size_3", {"output_size": (7, 7, 7)}, ValueError,
     r"output_size must be an int or a pair"),
    ("output_size_huge", {"output_size": 2**40}, ValueError, r"output_size must fit in 32 bits"),
    ("scale_0", {"spatial_scale": 0}, ValueError, r"spatial_scale must be finite and > 0"),
    ("scale_neg", {"spatial_scale": -1}, ValueError, r"spatial_scale must be finite and > 0"),
    ("scale_nan", {"spatial_scale": float("nan")}, ValueError, r"spatial_scale must be finite"),
    ("scale_inf", {"spatial_scale": float("inf")}, ValueError, r"spatial_scale must be finite"),
    ("scale_str", {"spatial_scale": "0.5"}, TypeError, r"spatial_scale must be a real number"),
    ("scale_none", {"spatial_scale": None}, TypeError, r"spatial_scale must be a real number"),
    ("scale_complex", {"spatial_scale": 0.5j}, TypeError, r"spatial_scale must be a real number"),
    ("sampling_float", {"sampling_ratio": 2.5}, TypeError, r"sampling_ratio must be an int"),
    ("sampling_str", {"sampling_ratio": "2"}, TypeError, r"sampling_ratio must be an int"),
    ("sampling_bool", {"sampling_ratio": True}, TypeError, r"sampling_ratio must be an int"),
    ("boxes_k4", {"boxes": BOXES[:, 1:]}, ValueError, r"boxes must have shape \(K, 5\)"),
    ("boxes_k6", {"boxes": np.zeros((3, 6))}, ValueError, r"boxes must have shape \(K, 5\)"),
    ("boxes_1d", {"boxes": BOXES[0]}, ValueError, r"boxes must have shape \(K, 5\)"),
    ("boxes_3d", {"boxes": BOXES[np.newaxis]}, ValueError, r"boxes must have shape \(K, 5\)"),
    ("boxes_3d_input_k3", {"input": FEATURES[0], "boxes": np.zeros((2, 3))}, ValueError,
     r"boxes must have shape \(K, 5\) or \(K, 4\)"),
    ("boxes_complex", {"boxes": BOXES.astype(complex)}, TypeError, r"boxes must hold real numbers"),
    ("boxes_bool", {"boxes": BOXES.astype(bool)}, TypeError, r"boxes must hold real numbers"),
    ("boxes_str", {"boxes": BOXES.astype(str)}, TypeError, r"boxes must hold real numbers"),
    ("boxes_nan", {"boxes": with_box(3, 2, np.nan)}, ValueError, r"boxes row 3 has a NaN"),
    ("boxes_inf", {"boxes": with_box(3, 4, np.inf)}, ValueError, r"boxes row 3 has a NaN or inf"),
    ("boxes_neg_inf", {"boxes": with_box(2, 1, -np.inf)}, ValueError, r"boxes row 2 has a NaN"),
    ("boxes_float32_overflow", {"boxes": with_box(4, 3, 1e39)}, ValueError,
     r"boxes row 4 does not fit in float32"),
    ("batch_half", {"boxes": with_box(1, 0, 0.5)}, ValueError,
     r"boxes row 1: batch index \S*0\.5\S* is not an integer"),
    ("batch_nan", {"boxes": with_box(2, 0, np.nan)}, ValueError, r"boxes row 2: .* not an integer"),
    ("batch_neg", {"boxes": with_box(2, 0, -1)}, ValueError,
     r"boxes row 2: batch index -1 is outside"),
    ("batch_n", {"boxes": with_box(3, 0, 2)}, ValueError, r"boxes row 3: batch index 2 is outside"),
    ("batch_3d_input", {"input": FEATURES[0], "boxes": BOXES}, ValueError,
     r"boxes row 1: batch index 1 is outside \[0, 1\)"),
    ("list_short", {"boxes": [BOXES[:, 1:]]}, ValueError, r"boxes as a list must hold one"),
    ("list_long", {"boxes": [BOXES[:, 1:]] * 3}, ValueError, r"boxes as a list must hold one"),
    ("list_k5", {"boxes": [BOXES, BOXES]}, ValueError, r"boxes\[0\] must have shape \(K_i, 4\)"),
    ("list_1d", {"boxes": [BOXES[:, 1:], BOXES[0, 1:]]}, ValueError,
     r"boxes\[1\] must have shape \(K_i, 4\)"),
    ("list_complex", {"boxes": [BOXES[:, 1:], BOXES[:, 1:].astype(complex)]}, TypeError,
     r"boxes\[1\] must hold real numbers"),
    ("list_nan", {"boxes": [BOXES[:2, 1:], with_box(1, 3, np.nan)[:, 1:]]}, ValueError,
     r"boxes row 3 has a NaN"),
    ("out_shape", {"out": np.zeros((5, 3, 2, 3), np.float32)}, ValueError,
     r"out must have shape"),
    ("out_layout", {"out": np.zeros((5, 2, 2, 3), np.float32)}, ValueError, r"out must have shape"),
    ("out_dtype", {"out": np.zeros((5, 3, 2, 2), np.float64)}, ValueError, r"out must have dtype"),
    ("out_float16", {"out": np.zeros((5, 3, 2, 2), np.float16)}, ValueError,
     r"out must have dtype"),
    ("out_read_only", {"out": read_only(OUT)}, ValueError, r"out is read-only"),
    ("out_overlaps_input", {"input": OVERLAP.reshape(2, 3, 8, 8),
                            "out": OVERLAP[:60].reshape(5, 3, 2, 2)}, ValueError,
     r"out overlaps an input"),
    ("out_overlaps_boxes", {"boxes": OVERLAP[:25].reshape(5, 5),
                            "out": OVERLAP[:60].reshape(5, 3, 2, 2)}, ValueError,
     r"out overlaps an input"),
    ("out_list", {"out": OUT.tolist()}, TypeError, r"out must be a numpy.ndarray"),
    ("threads_0", {"num_threads": 0}, ValueError, r"num_threads must be >= 1"),
    ("threads_neg", {"num_threads": -1}, ValueError, r"num_threads must be >= 1"),
    ("threads_float", {"num_threads": 1.5}, TypeError, r"num_threads must be an int"),
    ("threads_bool", {"num_threads": True}, TypeError, r"num_threads must be an int"),
]


# Narrowing 1e39 to float32 warns (overflow) before the ValueError; the error is what counts.
OVERFLOW_WARNING = pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")


@pytest.mark.parametrize("overrides, error, message", [
    pytest.param(*row[1:], id=row[0], marks=[OVERFLOW_WARNING] if "overflow" in row[0] else [])
    for row in BAD_ARGUMENTS
])
def test_bad_argument_raises(overrides, error, message):
    arguments = {"input": FEATURES, "boxes": BOXES, "output_size": 2, **overrides}
    with pytest.raises(error, match=message):
        roi_align(**arguments)


def test_float128_input_is_refused():
    if not hasattr(np, "float128"):
        pytest.skip("no float128 on this platform")
    with pytest.raises(TypeError, match=r"input must be float"):
        roi_align(FEATURES.astype(np.float128), BOXES, 2)


def test_valid_defaults_pass():
    """The table's base call is valid, so each row fails for its own reason alone."""
    assert roi_align(FEATURES, BOXES, 2).shape == (5, 3, 2, 2)


@pytest.mark.parametrize("scale", [1e39, 1e-50])
def test_spatial_scale_that_float32_cannot_hold_is_refused(scale):
    """1e39 overflows float32 and 1e-50 underflows to 0: refused, not silently all zeros."""
    features = np.ones((1, 1, 4, 4), np.float32)
    with pytest.raises(ValueError, match="spatial_scale .* does not fit in float32"):
        roi_align(features, np.array([[0, 0, 0, 2, 2.0]]), 1, spatial_scale=scale)
    # float64 holds both
    assert np.isfinite(roi_align(features.astype(np.float64), np.array([[0, 0, 0, 2, 2.0]]), 1,
                                 spatial_scale=scale)).all()
