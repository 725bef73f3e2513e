"""Every accepted form of the arguments gives the same numbers as the canonical one."""

import numpy as np
import pytest
from roi_inputs import align_nchw, random_boxes, to_layout

from roialign_cy import roi_align

DTYPES = [np.float32, np.float64]
LAYOUTS = ["NCHW", "NHWC"]
MODES = ["avg", "max"]


def make_inputs(dtype, n_images=2, seed=0):
    """Random (N, 3, 7, 9) NCHW features and 10 boxes over them."""
    rng = np.random.default_rng(seed)
    features = rng.uniform(-1, 1, (n_images, 3, 7, 9)).astype(dtype)
    return features, random_boxes(rng, n_images, 7, 9, 1.0, n_boxes=10)


@pytest.mark.parametrize("sampling_ratio", [2, -1])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_nhwc_is_nchw_transposed(dtype, mode, sampling_ratio):
    features, boxes = make_inputs(dtype)
    for aligned in (False, True):
        nchw = align_nchw(features, boxes, (3, 4), 0.5, sampling_ratio, aligned, mode=mode)
        nhwc = roi_align(to_layout(features, "NHWC"), boxes, (3, 4), 0.5, sampling_ratio,
                         aligned, layout="NHWC", mode=mode)
        assert nhwc.shape == (len(boxes), 3, 4, 3)
        np.testing.assert_array_equal(nhwc, nchw.transpose(0, 2, 3, 1))
        np.testing.assert_array_equal(
            align_nchw(features, boxes, (3, 4), 0.5, sampling_ratio, aligned, mode=mode,
                       layout="NHWC"), nchw)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_list_of_boxes_equals_k5(dtype, layout):
    features, boxes = make_inputs(dtype, n_images=3)
    boxes[:, 0] = [0, 2, 0, 0, 2, 2, 0, 2, 0, 0]  # image 1 has no box
    features = to_layout(features, layout)
    per_image = [boxes[boxes[:, 0] == i, 1:] for i in range(3)]
    in_list_order = np.concatenate([boxes[boxes[:, 0] == i] for i in range(3)])
    expected = roi_align(features, in_list_order, 3, 1.0, 2, layout=layout)
    np.testing.assert_array_equal(roi_align(features, per_image, 3, 1.0, 2, layout=layout),
                                  expected)
    as_tuple_of_lists = tuple(part.tolist() for part in per_image[:1]) + tuple(per_image[1:])
    np.testing.assert_array_equal(
        roi_align(features, as_tuple_of_lists, 3, 1.0, 2, layout=layout), expected)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_3d_input_is_one_image(layout):
    features, boxes = make_inputs(np.float32, n_images=1)
    boxes[:, 0] = 0
    image = to_layout(features, layout)[0]
    expected = roi_align(to_layout(features, layout), boxes, 2, 1.0, -1, layout=layout)
    np.testing.assert_array_equal(roi_align(image, boxes[:, 1:], 2, 1.0, -1, layout=layout),
                                  expected)
    np.testing.assert_array_equal(roi_align(image, boxes, 2, 1.0, -1, layout=layout), expected)


MEMORY_FORMS = {
    "fortran": np.asfortranarray,
    "negative_stride": lambda a: a[..., ::-1].copy()[..., ::-1],
    "sliced": lambda a: np.repeat(np.repeat(a, 2, axis=1), 3, axis=-1)[:, ::2, :, ::3],
    "read_only": lambda a: np.lib.stride_tricks.as_strided(a, writeable=False),
    "big_endian": lambda a: a.astype(a.dtype.newbyteorder(">")),
}


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("form", sorted(MEMORY_FORMS))
def test_memory_forms_give_identical_numbers(form, dtype, layout):
    features, boxes = make_inputs(dtype)
    features = to_layout(features, layout)
    expected = roi_align(features, boxes, 3, 1.0, 2, layout=layout)
    odd_features = MEMORY_FORMS[form](features)
    odd_boxes = MEMORY_FORMS[form](boxes[np.newaxis, np.newaxis])[0, 0]
    np.testing.assert_array_equal(odd_features, features)  # the form keeps the values
    got = roi_align(odd_features, odd_boxes, 3, 1.0, 2, layout=layout)
    assert got.dtype == dtype and got.dtype.isnative
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("dtype", DTYPES)
def test_boxes_are_cast_to_the_features_dtype(dtype):
    features, boxes = make_inputs(dtype)
    expected = roi_align(features, boxes.astype(dtype), 3, 0.5, 2)
    np.testing.assert_array_equal(roi_align(features, boxes, 3, 0.5, 2), expected)
    whole = np.round(boxes * [1, 4, 4, 4, 4])
    np.testing.assert_array_equal(roi_align(features, whole.astype(np.int64), 3, 0.5, 2),
                                  roi_align(features, whole, 3, 0.5, 2))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_float16_is_float32_rounded(layout, mode):
    features, boxes = make_inputs(np.float16)
    features = to_layout(features, layout)
    got = roi_align(features, boxes, 3, 1.0, -1, True, layout=layout, mode=mode)
    wide = roi_align(features.astype(np.float32), boxes, 3, 1.0, -1, True, layout=layout,
                     mode=mode)
    assert got.dtype == np.float16
    np.testing.assert_array_equal(got, wide.astype(np.float16))


@pytest.mark.parametrize("output_size", [5, (5, 5), [5, 5], np.int64(5), (np.int32(5), 5)])
def test_output_size_forms(output_size):
    features, boxes = make_inputs(np.float64)
    expected = roi_align(features, boxes, (5, 5))
    np.testing.assert_array_equal(roi_align(features, boxes, output_size), expected)
