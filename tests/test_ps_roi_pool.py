"""ps_roi_pool, ps_roi_pool_backward and PSRoIPool against the loop reference
(tests/reference.py) and torchvision's golden numbers: the forward bit for bit; the backward
is the exact adjoint of that forward, and differs from torchvision's own backward (which
clips bins to [0, H] where its forward clips to [0, H - 1], and rounds float64 box corners
through float32) exactly where the loop reference of torchvision's backward says, and
nowhere else. Also both layouts, dtypes, strides, out=, no boxes, threads, the class."""

import pickle

import numpy as np
import pytest

from golden_ps import case_names, load_case
from reference import ps_channel, ps_pool_bins, reference_ps_roi_pool
from roi_inputs import random_boxes, to_layout, to_nchw

from roialign_cy import (PSRoIAlign, PSRoIPool, _plan, _runtime, ps_roi_pool,
                         ps_roi_pool_backward)

DTYPES = [np.float32, np.float64]
LAYOUTS = ["NCHW", "NHWC"]
ATOL = {np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-12}
GEOMETRIES = [(1.0, (3, 3), 2), (0.5, (2, 3), 3), (1 / 16, (3, 2), 1), (0.3, (2, 2), 2)]


def random_case(rng, size, c_out, scale, n_images=3, dtype=np.float64, n_boxes=14):
    """Random (N, C_out * PH * PW, H, W) features and mixed boxes (see roi_inputs)."""
    height, width = (int(v) for v in rng.integers(5, 12, size=2))
    features = rng.uniform(-1, 1, (n_images, c_out * size[0] * size[1], height, width))
    return features.astype(dtype), random_boxes(rng, n_images, height, width, scale, n_boxes)


# ---- forward -------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_matches_reference(dtype, layout):
    rng = np.random.default_rng([dtype == np.float32, layout == "NHWC"])
    for scale, size, c_out in GEOMETRIES:
        features, boxes = random_case(rng, size, c_out, scale, dtype=dtype)
        got = to_nchw(ps_roi_pool(to_layout(features, layout), boxes, size, scale,
                                  layout=layout), layout)
        assert got.dtype == dtype and got.shape == (len(boxes), c_out) + size
        expected = reference_ps_roi_pool(features, boxes, size, scale)
        np.testing.assert_allclose(got, expected, rtol=0, atol=ATOL[np.dtype(dtype)])


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("name", case_names("ps_roi_pool"))
def test_matches_torchvision_golden_bit_for_bit(name, layout):
    params, data = load_case(name)
    features, expected = data["input"], data["output"]
    got = to_nchw(ps_roi_pool(to_layout(features, layout), data["boxes"],
                              tuple(params["output_size"]), params["spatial_scale"],
                              layout=layout), layout)
    assert got.dtype == features.dtype and got.shape == expected.shape
    np.testing.assert_array_equal(got, expected)


def test_last_row_and_column_never_take_part():
    """torchvision's forward clips bins to [0, H - 1]: the map's last row and column are
    never read, and a bin lying on them alone is empty (0)."""
    features = np.zeros((1, 4, 5, 6))
    features[..., -1, :] = features[..., :, -1] = np.nan
    pooled = ps_roi_pool(features, np.array([[0, 0.0, 0.0, 6.0, 5.0]]), 2)
    np.testing.assert_array_equal(pooled, 0)
    edge = ps_roi_pool(np.ones((1, 1, 5, 6)), np.array([[0, 4.6, 3.6, 6.0, 5.0]]), 1)
    np.testing.assert_array_equal(edge, 0)  # [5, 6) x [4, 5), clipped to [5, 5) x [4, 4)


def test_bins_are_averaged_with_no_plus_one():
    """size = max(end - start, 1), unlike roi_pool's +1: box [0, 4) on a 6x6 ramp."""
    ramp = np.arange(36.0).reshape(1, 1, 6, 6)
    features = np.repeat(ramp, 4, axis=1)
    got = ps_roi_pool(features, np.array([[0, 0.0, 0.0, 4.0, 4.0]]), 2)
    expected = [[ramp[0, 0, :2, :2].mean(), ramp[0, 0, :2, 2:4].mean()],
                [ramp[0, 0, 2:4, :2].mean(), ramp[0, 0, 2:4, 2:4].mean()]]
    np.testing.assert_array_equal(got[0, 0], expected)


# ---- backward: the adjoint of the forward; where it differs from torchvision's ------------------


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_backward_matches_reference_adjoint(dtype, layout):
    rng = np.random.default_rng([7, dtype == np.float32, layout == "NHWC"])
    for scale, size, c_out in GEOMETRIES:
        features, boxes = random_case(rng, size, c_out, scale, n_images=2, dtype=dtype)
        grad_output = rng.standard_normal((len(boxes), c_out) + size).astype(dtype)
        got = ps_roi_pool_backward(to_layout(grad_output, layout), boxes,
                                   to_layout(features, layout).shape, size, scale,
                                   layout=layout)
        assert got.dtype == dtype
        _, expected = reference_ps_roi_pool(features, boxes, size, scale, grad_output)
        np.testing.assert_allclose(to_nchw(got, layout), expected, rtol=0,
                                   atol=ATOL[np.dtype(dtype)])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_adjoint_identity(layout, dtype):
    """<ps_roi_pool(x), g> == <x, ps_roi_pool_backward(g)> for any x, g."""
    rng = np.random.default_rng([3, layout == "NHWC", dtype == np.float32])
    size, c_out = (3, 2), 3
    features, boxes = random_case(rng, size, c_out, 0.5, dtype=dtype, n_boxes=40)
    features = to_layout(features, layout)
    kwargs = dict(output_size=size, spatial_scale=0.5, layout=layout)
    pooled = ps_roi_pool(features, boxes, **kwargs).astype(np.float64)
    for _ in range(3):
        grad_output = rng.standard_normal(pooled.shape).astype(dtype)
        grad_input = ps_roi_pool_backward(grad_output, boxes, features.shape, **kwargs)
        lhs = np.vdot(pooled, grad_output.astype(np.float64))
        rhs = np.vdot(features.astype(np.float64), grad_input.astype(np.float64))
        magnitude = np.vdot(np.abs(pooled), np.abs(grad_output.astype(np.float64)))
        assert magnitude > 10.0
        assert abs(lhs - rhs) <= (1e-13 if dtype == np.float64 else 1e-5) * magnitude


def bins_that_differ(features, boxes, size, scale):
    """(image, channel, rows, cols) of every bin whose elements our backward and
    torchvision's treat differently: its clipped range or its rounding differs (the union
    of both ranges), per tests/reference.py's ps_pool_bins."""
    dtype = features.dtype.type
    _, _, height, width = features.shape
    differing = []
    for batch_index, x1, y1, x2, y2 in np.asarray(boxes).astype(dtype):
        ours = (ps_pool_bins(y1, y2, scale, size[0], height, dtype),
                ps_pool_bins(x1, x2, scale, size[1], width, dtype))
        theirs = (ps_pool_bins(y1, y2, scale, size[0], height, dtype, height, np.float32),
                  ps_pool_bins(x1, x2, scale, size[1], width, dtype, width, np.float32))
        for ph in range(size[0]):
            for pw in range(size[1]):
                a = ours[0][ph], ours[1][pw]
                b = theirs[0][ph], theirs[1][pw]
                if a == b:
                    continue
                rows = slice(min(a[0][0], b[0][0]), max(a[0][1], b[0][1]))
                cols = slice(min(a[1][0], b[1][0]), max(a[1][1], b[1][1]))
                for c in range(features.shape[1] // (size[0] * size[1])):
                    differing.append((int(batch_index), ps_channel(c, ph, pw, size), rows, cols))
    return differing


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("name", case_names("ps_roi_pool_backward"))
def test_backward_versus_torchvision_golden(name, layout):
    """torchvision's gradient is its own backward, which the loop reference reproduces
    (torchvision_backward=True); ours equals torchvision's bit for bit on every element no
    differing bin touches (the same contributions in the same order), and is the adjoint
    of the forward everywhere."""
    params, data = load_case(name)
    features, grad_output, expected = data["input"], data["grad_output"], data["grad_input"]
    size, scale = tuple(params["output_size"]), params["spatial_scale"]
    got = to_nchw(ps_roi_pool_backward(to_layout(grad_output, layout), data["boxes"],
                                       to_layout(features, layout).shape, size, scale,
                                       layout=layout), layout)
    atol = ATOL[features.dtype]
    _, torchvision_like = reference_ps_roi_pool(features, data["boxes"], size, scale,
                                                grad_output, torchvision_backward=True)
    np.testing.assert_allclose(expected, torchvision_like, rtol=0, atol=atol)
    _, adjoint = reference_ps_roi_pool(features, data["boxes"], size, scale, grad_output)
    np.testing.assert_allclose(got, adjoint, rtol=0, atol=atol)
    same = np.ones(features.shape, bool)
    for image, channel, rows, cols in bins_that_differ(features, data["boxes"], size, scale):
        same[image, channel, rows, cols] = False
    assert same.mean() > 0.3
    np.testing.assert_array_equal(got[same], expected[same])


def test_golden_backward_differs_from_ours_somewhere():
    """The premise of the test above: torchvision's backward is not ours on these cases."""
    differs = 0
    for name in case_names("ps_roi_pool_backward"):
        params, data = load_case(name)
        got = ps_roi_pool_backward(data["grad_output"], data["boxes"], data["input"].shape,
                                   tuple(params["output_size"]), params["spatial_scale"])
        differs += int(not np.array_equal(got, data["grad_input"]))
    assert differs >= 3


def test_backward_at_the_border_is_the_adjoint_not_torchvision():
    """Box [0, 0, 6, 5] on a 5x6 map, one bin: the forward averages rows 0-3 and columns
    0-4 (20 elements, clipped to H - 1 and W - 1), so the gradient is 1/20 there and 0 on
    the last row and column (torchvision's backward would give 1/30 everywhere)."""
    grad = ps_roi_pool_backward(np.ones((1, 1, 1, 1)), np.array([[0, 0.0, 0.0, 6.0, 5.0]]),
                                (1, 1, 5, 6), 1)
    expected = np.zeros((5, 6))
    expected[:4, :5] = 1 / 20
    np.testing.assert_array_equal(grad[0, 0], expected)


# ---- forms, threads --------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", LAYOUTS)
def test_float16_strides_and_byte_order(layout):
    rng = np.random.default_rng(4)
    features, boxes = random_case(rng, (2, 2), 3, 1.0, dtype=np.float32)
    features = to_layout(features, layout)
    expected = ps_roi_pool(features, boxes, 2, layout=layout)
    for form in (features.astype(">f4"), np.asfortranarray(features)):
        np.testing.assert_array_equal(ps_roi_pool(form, boxes, 2, layout=layout), expected)
    half = ps_roi_pool(features.astype(np.float16), boxes, 2, layout=layout)
    assert half.dtype == np.float16
    np.testing.assert_array_equal(
        half, ps_roi_pool(features.astype(np.float16).astype(np.float32), boxes, 2,
                          layout=layout).astype(np.float16))
    grad = rng.standard_normal(expected.shape).astype(np.float32)
    expected_grad = ps_roi_pool_backward(grad, boxes, features.shape, 2, layout=layout)
    np.testing.assert_array_equal(
        ps_roi_pool_backward(grad.astype(">f4"), boxes, features.shape, 2, layout=layout),
        expected_grad)
    half_grad = ps_roi_pool_backward(grad.astype(np.float16), boxes, features.shape, 2,
                                     layout=layout)
    assert half_grad.dtype == np.float16


@pytest.mark.parametrize("layout", LAYOUTS)
def test_out_and_no_boxes(layout):
    rng = np.random.default_rng(6)
    features, boxes = random_case(rng, (2, 2), 3, 1.0)
    features = to_layout(features, layout)
    expected = ps_roi_pool(features, boxes, 2, layout=layout)
    out = np.full(expected.shape[::-1], np.nan).T
    assert ps_roi_pool(features, boxes, 2, layout=layout, out=out) is out
    np.testing.assert_array_equal(out, expected)
    grad = rng.standard_normal(expected.shape)
    expected_grad = ps_roi_pool_backward(grad, boxes, features.shape, 2, layout=layout)
    grad_out = np.full(features.shape, 5.0)
    assert ps_roi_pool_backward(grad, boxes, features.shape, 2, layout=layout,
                                out=grad_out) is grad_out
    np.testing.assert_array_equal(grad_out, expected_grad)
    empty = ps_roi_pool(features, np.zeros((0, 5)), 2, layout=layout)
    assert empty.shape == ((0, 3, 2, 2) if layout == "NCHW" else (0, 2, 2, 3))
    np.testing.assert_array_equal(
        ps_roi_pool_backward(empty, [np.zeros((0, 4))] * 3, features.shape, 2, layout=layout), 0)


def test_channels_not_a_multiple_are_refused():
    with pytest.raises(ValueError, match=r"input has 5 channels.*multiple.*2 \* 2 = 4"):
        ps_roi_pool(np.zeros((1, 5, 5, 5)), np.zeros((1, 5)), 2)
    with pytest.raises(ValueError, match=r"input_shape has 5 channels"):
        ps_roi_pool_backward(np.zeros((1, 1, 2, 2)), np.zeros((1, 5)), (1, 5, 5, 5), 2)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_threads_give_bit_identical_results(layout):
    rng = np.random.default_rng(11)
    size, c_out = (3, 3), 16
    features, boxes = random_case(rng, size, c_out, 0.5, n_images=2, dtype=np.float32,
                                  n_boxes=300)
    features = to_layout(features, layout)
    pooled = ps_roi_pool(features, boxes, size, 0.5, layout=layout, num_threads=1)
    grad = rng.standard_normal(pooled.shape).astype(np.float32)
    if _runtime.OPENMP_ENABLED and _plan.USABLE_CPUS > 1:
        assert _plan.team_size(3, grad.size) > 1
    for n in (2, 3):
        np.testing.assert_array_equal(
            ps_roi_pool(features, boxes, size, 0.5, layout=layout, num_threads=n), pooled)
        np.testing.assert_array_equal(
            ps_roi_pool_backward(grad, boxes, features.shape, size, 0.5, layout=layout,
                                 num_threads=n),
            ps_roi_pool_backward(grad, boxes, features.shape, size, 0.5, layout=layout,
                                 num_threads=1))


@pytest.mark.parametrize("block", [1, 5])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_backward_channel_blocks_that_split_bins(layout, block, monkeypatch):
    """Work items of `block` input channels give the same gradient, bit for bit."""
    rng = np.random.default_rng([15, block])
    features, boxes = random_case(rng, (2, 3), 3, 0.5, n_images=2, n_boxes=20)
    features = to_layout(features, layout)
    grad = rng.standard_normal((len(boxes), 3, 2, 3) if layout == "NCHW" else (len(boxes), 2, 3, 3))
    expected = ps_roi_pool_backward(grad, boxes, features.shape, (2, 3), 0.5, layout=layout)
    monkeypatch.setattr(_plan, "channel_share", lambda n_threads, n_images, channels: block)
    got = ps_roi_pool_backward(grad, boxes, features.shape, (2, 3), 0.5, layout=layout)
    np.testing.assert_array_equal(got, expected)


# ---- PSRoIPool -------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", LAYOUTS)
def test_class_equals_functions(layout):
    rng = np.random.default_rng(12)
    features, boxes = random_case(rng, (3, 2), 2, 0.5, n_images=2)
    features = to_layout(features, layout)
    layer = PSRoIPool((3, 2), 0.5, layout=layout)
    expected = ps_roi_pool(features, boxes, (3, 2), 0.5, layout=layout)
    np.testing.assert_array_equal(layer(features, boxes), expected)
    assert not np.array_equal(PSRoIPool((3, 2), 0.25, layout=layout)(features, boxes), expected)
    grad = rng.standard_normal(expected.shape)
    expected_grad = ps_roi_pool_backward(grad, boxes, features.shape, (3, 2), 0.5, layout=layout)
    np.testing.assert_array_equal(layer.backward(grad, boxes, features.shape), expected_grad)
    out = np.empty_like(expected)
    assert layer(features, boxes, out=out, num_threads=1) is out
    grad_out = np.empty_like(features)
    assert layer.backward(grad, boxes, features.shape, out=grad_out, num_threads=2) is grad_out
    np.testing.assert_array_equal(grad_out, expected_grad)


def test_repr_and_equality():
    assert repr(PSRoIPool(5, 0.25)) == ("PSRoIPool(output_size=(5, 5), spatial_scale=0.25, "
                                        "layout='NCHW')")
    layer = PSRoIPool((2, 3), 0.125, layout="NHWC")
    assert eval(repr(layer), {"PSRoIPool": PSRoIPool}) == layer
    assert PSRoIPool(3, 0.5) == PSRoIPool((3, 3), 0.5)
    for other in (PSRoIPool(3, 0.25), PSRoIPool(3, 0.5, layout="NHWC"), PSRoIPool(4, 0.5),
                  PSRoIAlign(3, 0.5), "PSRoIPool(3, 0.5)"):
        assert PSRoIPool(3, 0.5) != other
    with pytest.raises(TypeError):
        hash(PSRoIPool(3))


@pytest.mark.parametrize("layer", [PSRoIPool((2, 3), 0.5, layout="NHWC"), PSRoIPool(3)],
                         ids=repr)
def test_pickle_round_trip(layer):
    copy = pickle.loads(pickle.dumps(layer))
    assert copy == layer and copy is not layer and repr(copy) == repr(layer)
    rng = np.random.default_rng(13)
    features, boxes = random_case(rng, layer.output_size, 2, layer.spatial_scale)
    features = to_layout(features, layer.layout)
    np.testing.assert_array_equal(copy(features, boxes), layer(features, boxes))


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(output_size=0), ValueError, "output_size"),
    (dict(output_size=(2, 0)), ValueError, "output_size"),
    (dict(output_size=True), TypeError, "output_size"),
    (dict(output_size=2, spatial_scale=-0.5), ValueError, "spatial_scale"),
    (dict(output_size=2, spatial_scale=float("nan")), ValueError, "spatial_scale"),
    (dict(output_size=2, layout="NWHC"), ValueError, "layout"),
])
def test_invalid_parameters_rejected_at_construction(kwargs, error, match):
    with pytest.raises(error, match=match):
        PSRoIPool(**kwargs)


def test_layout_is_keyword_only():
    with pytest.raises(TypeError):
        PSRoIPool(2, 1.0, "NHWC")
