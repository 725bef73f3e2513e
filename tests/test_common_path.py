"""The one-go check of common calls (_validate.common_forward/common_backward) agrees with the
full check_* path: same result, or the same exception and message, for usual and odd inputs."""

import numpy as np
import pytest

from roialign_cy import _validate, roi_align, roi_align_backward, roi_pool, roi_pool_backward

N, C, H, W = 2, 3, 6, 7
PH, PW = 3, 4


def _features(layout="NCHW", dtype=np.float32):
    features = np.random.default_rng(0).uniform(-1, 1, (N, C, H, W)).astype(dtype)
    return np.ascontiguousarray(features.transpose(0, 2, 3, 1)) if layout == "NHWC" else features


def _boxes(dtype=np.float32):
    return np.array([[0, 0.5, 1.0, 5.0, 4.5], [1, 2.0, 0.0, 6.0, 5.0], [1, -1.0, -2.0, 8.0, 9.0],
                     [0, 3.0, 3.0, 3.5, 3.2], [1, 0.0, 0.0, 0.0, 0.0]], dtype=dtype)


def _grad(n_rois, layout="NCHW", dtype=np.float32):
    shape = (n_rois, C, PH, PW) if layout == "NCHW" else (n_rois, PH, PW, C)
    return np.random.default_rng(1).uniform(-1, 1, shape).astype(dtype)


def _byteswapped(array):
    return array.astype(array.dtype.newbyteorder(">" if array.dtype.byteorder != ">" else "<"))


def _bad_row(value, column, dtype=np.float32):
    boxes = _boxes(dtype)
    boxes[2, column] = value
    return boxes


def _list_of_boxes():
    boxes = _boxes()
    return [boxes[boxes[:, 0] == i, 1:] for i in range(N)]


# name -> changes to the base call; "features"/"boxes"/"grad" are built from their defaults.
VARIANTS = {
    "common": {},
    "nhwc": {"layout": "NHWC"},
    "float32-boxes": {"boxes": _boxes(np.float32)},
    "float64-boxes": {"boxes": _boxes(np.float64)},
    "float16": {"dtype": np.float16},
    "int-boxes": {"boxes": _boxes(np.float32).astype(np.int32)},
    "float16-boxes": {"boxes": _boxes(np.float16)},
    "byteswapped-boxes": {"boxes": _byteswapped(_boxes())},
    "fortran-boxes": {"boxes": np.asfortranarray(_boxes())},
    "strided-boxes": {"boxes": np.repeat(_boxes(), 2, axis=0)[::2]},
    "list-boxes": {"boxes": _list_of_boxes()},
    "nested-list-boxes": {"boxes": _boxes().tolist()},
    "no-boxes": {"boxes": np.zeros((0, 5), np.float32)},
    "boxes-k4": {"boxes": _boxes()[:, 1:].copy()},
    "boxes-3d": {"boxes": _boxes()[None]},
    "nan-box": {"boxes": _bad_row(np.nan, 3)},
    "inf-box": {"boxes": _bad_row(np.inf, 1)},
    "huge-box": {"boxes": _bad_row(1e39, 2, np.float64)},  # does not fit float32 features
    "fraction-index": {"boxes": _bad_row(0.5, 0)},
    "index-out-of-range": {"boxes": _bad_row(N, 0)},
    "negative-index": {"boxes": _bad_row(-1, 0)},
    "int-output-size": {"output_size": 3},
    "list-output-size": {"output_size": [PH, PW]},
    "numpy-output-size": {"output_size": (np.int64(PH), np.int64(PW))},
    "zero-output-size": {"output_size": (0, PW)},
    "bool-output-size": {"output_size": (True, PW)},
    "huge-output-size": {"output_size": (2**31, PW)},
    "three-output-size": {"output_size": (PH, PW, 1)},
    "numpy-scale": {"spatial_scale": np.float64(0.5)},
    "int-scale": {"spatial_scale": 1},
    "bool-scale": {"spatial_scale": True},
    "nan-scale": {"spatial_scale": float("nan")},
    "inf-scale": {"spatial_scale": float("inf")},
    "negative-scale": {"spatial_scale": -0.5},
    "tiny-scale": {"spatial_scale": 1e-46},
    "huge-scale": {"spatial_scale": 1e39},
    "bad-layout": {"layout": "nchw"},
    "layout-not-str": {"layout": 4},
    "numpy-str-layout": {"layout": np.str_("NHWC")},
    "noncontiguous-features": {"features_view": "noncontiguous"},
    "byteswapped-features": {"features_view": "byteswapped"},
    "3d-features": {"features_view": "3d"},
    "readonly-features": {"features_view": "readonly"},
    "list-features": {"features_view": "list"},
    "int-features": {"features_view": "int"},
    "empty-map": {"features_view": "empty"},
    "out": {"out": True},
    "num-threads-2": {"num_threads": 2},
    "num-threads-0": {"num_threads": 0},
    "num-threads-float": {"num_threads": 1.0},
}


def _view(array, how, layout):
    """The odd forms of an array (features, grad_output or roi_pool_backward's input)."""
    if how == "noncontiguous":
        return np.repeat(array, 2, axis=-1)[..., ::2]
    if how == "byteswapped":
        return _byteswapped(array)
    if how == "readonly":
        array = array.copy()
        array.flags.writeable = False
        return array
    if how == "list":
        return array.tolist()
    if how == "int":
        return array.astype(np.int32)
    if how == "empty":
        return array[:, :, :0] if layout == "NCHW" else array[:, :0]
    return array


def _call(function, variant, dtype):
    """Run `function` on the variant's arguments; the result or the exception raised."""
    changes = dict(VARIANTS[variant])
    layout = changes.pop("layout", "NCHW")
    dtype = changes.pop("dtype", dtype)
    how = changes.pop("features_view", None)
    boxes = changes.pop("boxes", _boxes(dtype))
    output_size = changes.pop("output_size", (PH, PW))
    spatial_scale = changes.pop("spatial_scale", 0.5)
    features = _features(layout if isinstance(layout, str) else "NCHW", dtype)
    grad = _grad(len(boxes) if hasattr(boxes, "__len__") and not isinstance(boxes, list)
                 else len(_boxes()), layout if isinstance(layout, str) else "NCHW", dtype)
    if function is roi_align_backward and how == "3d":
        how = None  # input_shape (below) is the 3-D case here
    if function in (roi_align, roi_pool, roi_pool_backward):
        features = _view(features, how, layout)
    else:
        grad = _view(grad, how, layout)
    if how == "3d" and function is not roi_align_backward:
        features = features[0]
    kwargs = {"layout": layout, **changes}
    if kwargs.get("out"):
        result_shape = np.shape(features) if "backward" in function.__name__ else grad.shape
        kwargs["out"] = np.full(result_shape, 7, np.asarray(grad).dtype)
    try:
        if function is roi_align:
            result = roi_align(features, boxes, output_size, spatial_scale, 2, False, **kwargs)
        elif function is roi_pool:
            result = roi_pool(features, boxes, output_size, spatial_scale, **kwargs)
        elif function is roi_align_backward:
            result = roi_align_backward(grad, boxes, features.shape, output_size, spatial_scale,
                                        2, True, **kwargs)
        else:
            result = roi_pool_backward(grad, boxes, features, output_size, spatial_scale,
                                       **kwargs)
    except Exception as error:  # noqa: BLE001 - compared below
        return type(error), str(error)
    return result.dtype, result.shape, result.tobytes()


FUNCTIONS = [roi_align, roi_pool, roi_align_backward, roi_pool_backward]


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("function", FUNCTIONS, ids=lambda f: f.__name__)
def test_common_path_agrees_with_full_path(function, dtype, variant, monkeypatch):
    common = _call(function, variant, dtype)
    monkeypatch.setattr(_validate, "common_forward", lambda *args: None)
    monkeypatch.setattr(_validate, "common_backward", lambda *args: None)
    assert _call(function, variant, dtype) == common


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_common_path_taken(layout, dtype):
    """The usual call does take the one-go check (else it would be slow, not wrong)."""
    features, boxes, grad = _features(layout, dtype), _boxes(dtype), _grad(5, layout, dtype)
    assert _validate.common_forward(features, boxes, (PH, PW), 0.5, layout) is not None
    assert _validate.common_forward(features, boxes, PH, 1.0, layout) is not None
    assert _validate.common_forward(features, boxes[:0], (PH, PW), 0.5, layout) is not None
    for needs_input in (False, True):
        assert _validate.common_backward(grad, boxes, features.shape, (PH, PW), 0.5, layout,
                                         features, needs_input) is not None


@pytest.mark.parametrize("variant", [name for name in VARIANTS if name not in
                                     ("common", "nhwc", "float32-boxes", "float64-boxes",
                                      "no-boxes", "int-output-size", "num-threads-2",
                                      "num-threads-0", "num-threads-float", "out",
                                      "readonly-features")])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_common_path_refuses_odd_forms(dtype, variant, monkeypatch):
    """Every odd or bad form leaves the one-go check (returns None, never raises)."""
    if dtype == np.float64 and variant in ("huge-box", "tiny-scale", "huge-scale"):
        pytest.skip("fits in float64: a valid common call")
    seen = []
    original = _validate.common_forward

    def spy(*args):
        seen.append(original(*args))
        return seen[-1]

    monkeypatch.setattr(_validate, "common_forward", spy)
    _call(roi_align, variant, dtype)
    assert seen in ([], [None])


@pytest.mark.parametrize("n_rois, n_images", [(0, 1), (1, 1), (7, 3), (500, 4), (3, 9)])
def test_group_by_image_is_a_stable_sort(n_rois, n_images):
    """The compiled counting sort equals argsort(kind="stable") + searchsorted."""
    from roialign_cy import _strategy

    batch_index = np.random.default_rng(n_rois).integers(0, n_images, n_rois).astype(np.intp)
    roi_order, image_first = _strategy.rois_by_image(batch_index, n_images)
    expected_order = np.argsort(batch_index, kind="stable")
    assert roi_order.dtype == image_first.dtype == np.intp
    np.testing.assert_array_equal(roi_order, expected_order)
    np.testing.assert_array_equal(
        image_first, np.searchsorted(batch_index[expected_order], np.arange(n_images + 1)))


@pytest.mark.parametrize("rows", [
    _boxes().astype(np.int64), _boxes().astype(np.int32), _byteswapped(_boxes()),
    np.asfortranarray(_boxes()), _boxes()[:, :4], _boxes()[::2],
], ids=["int64", "int32", "byteswapped", "fortran", "k4", "strided"])
def test_split_rows_refuses_what_it_cannot_read(rows):
    """_boxes reads raw pointers: any array the wrappers should never pass is refused."""
    from roialign_cy import _boxes as boxes_module

    with pytest.raises(ValueError):
        boxes_module.split_rows(rows, N, np.dtype(np.float32))
    with pytest.raises(ValueError):
        boxes_module.group_by_image(rows, N)


@pytest.mark.parametrize("values", [[-1, 0, 24], [-2, 0, 3], [0, 25, 3], [-1, -1, -1], []])
@pytest.mark.parametrize("dtype", [np.int32, np.int64, ">i4"])
def test_argmax_range_check(values, dtype):
    """The compiled one-pass range check of int32 indices decides as NumPy's min() and max()."""
    from roialign_cy import _boxes as boxes_module

    indices = np.array(values, dtype=dtype)
    inside = all(-1 <= value < 25 for value in values)
    if indices.dtype == np.int32 and indices.dtype.isnative:
        assert boxes_module.all_within(indices, -1, 25) == inside
    if inside:
        _validate.check_argmax(indices, indices.shape, 25)
    else:
        with pytest.raises(ValueError, match="outside"):
            _validate.check_argmax(indices, indices.shape, 25)
