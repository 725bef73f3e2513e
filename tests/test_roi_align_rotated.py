"""roi_align_rotated, roi_align_rotated_backward and RoIAlignRotated against the loop
reference of detectron2's formula (tests/reference.py, bit for bit in the features' dtype and
to rounding in float64), mmcv's own test expectations, roi_align at angle 0, np.rot90 at
quarter turns, the adjoint identity and finite differences, huge and degenerate boxes,
both layouts, dtypes, strides, out=, no boxes, thread-count determinism and the class."""

import pickle
import time

import numpy as np
import pytest

from reference import reference_roi_align_rotated
from roi_inputs import to_layout, to_nchw

from roialign_cy import (RoIAlignRotated, _roi_align_rotated, _runtime, roi_align,
                         roi_align_rotated, roi_align_rotated_backward)

DTYPES = [np.float32, np.float64]
LAYOUTS = ["NCHW", "NHWC"]
# detectron2's defaults, and mmcv's legacy mode (aligned=False, clockwise, radians)
MODES = {"detectron2": dict(aligned=True, clockwise=False, angle_unit="degrees"),
         "mmcv": dict(aligned=False, clockwise=True, angle_unit="radians")}


def reference(features, boxes, output_size, scale, sampling_ratio, mode, dtype=None,
              grad_output=None):
    """The loop reference with a MODES entry's parameters."""
    params = MODES[mode]
    return reference_roi_align_rotated(
        features, boxes, output_size, scale, sampling_ratio, params["aligned"],
        params["clockwise"], params["angle_unit"] == "degrees", dtype, grad_output)


def random_rotated_boxes(rng, n_images, height, width, scale, n_boxes, mode="detectron2"):
    """Boxes of every kind: inside, crossing the border, outside, tiny, any angle."""
    cx = rng.uniform(-2, width + 2, n_boxes) / scale
    cy = rng.uniform(-2, height + 2, n_boxes) / scale
    w = rng.uniform(0, 1.5 * width, n_boxes) / scale
    h = rng.uniform(0, 1.5 * height, n_boxes) / scale
    w[:2] = [0.0, 0.3 / scale]
    angle = rng.uniform(-360, 360, n_boxes)
    if MODES[mode]["angle_unit"] == "radians":
        angle = np.deg2rad(angle)
    batch = rng.integers(0, n_images, n_boxes)
    return np.column_stack([batch, cx, cy, w, h, angle])


def random_case(rng, dtype, scale=0.5, n_images=2, channels=3, n_boxes=10, mode="detectron2"):
    """Random (N, C, H, W) features and rotated boxes."""
    height, width = (int(v) for v in rng.integers(5, 12, size=2))
    features = rng.uniform(-1, 1, (n_images, channels, height, width)).astype(dtype)
    return features, random_rotated_boxes(rng, n_images, height, width, scale, n_boxes, mode)


CASES = [(0.5, (2, 3), 2), (1.0, (3, 3), -1), (0.25, (3, 2), 0), (1.0, 1, 3)]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("scale, size, sampling_ratio", CASES)
def test_forward_is_the_reference_bit_for_bit(scale, size, sampling_ratio, dtype, layout, mode):
    rng = np.random.default_rng(abs(hash((scale, sampling_ratio, layout, mode))) % 2**32)
    features, boxes = random_case(rng, dtype, scale, mode=mode)
    result = roi_align_rotated(to_layout(features, layout), boxes, size, scale, sampling_ratio,
                               **MODES[mode], layout=layout)
    assert result.dtype == dtype
    result = to_nchw(result, layout)
    expected = reference(features, boxes, size, scale, sampling_ratio, mode, dtype)
    np.testing.assert_array_equal(result, expected)
    in_float64 = reference(features, boxes, size, scale, sampling_ratio, mode)
    np.testing.assert_allclose(result, in_float64, rtol=0,
                               atol=2e-5 if dtype == np.float32 else 1e-12)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("scale, size, sampling_ratio", CASES)
def test_backward_is_the_reference_bit_for_bit(scale, size, sampling_ratio, dtype, layout, mode):
    rng = np.random.default_rng(abs(hash((scale, sampling_ratio, layout, mode, 1))) % 2**32)
    features, boxes = random_case(rng, dtype, scale, mode=mode)
    k, c = len(boxes), features.shape[1]
    ph, pw = (size, size) if np.isscalar(size) else size
    grad = rng.uniform(-1, 1, (k, c, ph, pw)).astype(dtype)
    shape = to_layout(features, layout).shape
    result = roi_align_rotated_backward(to_layout(grad, layout), boxes, shape, size, scale,
                                        sampling_ratio, **MODES[mode], layout=layout)
    assert result.dtype == dtype
    result = to_nchw(result, layout)
    expected = reference(features, boxes, size, scale, sampling_ratio, mode, dtype,
                         grad_output=grad)
    np.testing.assert_array_equal(result, expected)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("sampling_ratio", [1, 2, 3])
def test_angle_zero_is_roi_align_aligned(dtype, sampling_ratio):
    """Angle 0: roi_align(aligned=True) of [cx - w/2, cy - h/2, cx + w/2, cy + h/2]."""
    rng = np.random.default_rng(3)
    features, boxes = random_case(rng, dtype, 0.5, n_boxes=30)
    boxes[:, 5] = 0.0
    rotated = roi_align_rotated(features, boxes, (3, 4), 0.5, sampling_ratio)
    corners = np.column_stack([boxes[:, 0], boxes[:, 1] - boxes[:, 3] / 2,
                               boxes[:, 2] - boxes[:, 4] / 2, boxes[:, 1] + boxes[:, 3] / 2,
                               boxes[:, 2] + boxes[:, 4] / 2])
    expected = roi_align(features, corners, (3, 4), 0.5, sampling_ratio, aligned=True)
    np.testing.assert_allclose(rotated, expected, rtol=0,
                               atol=1e-5 if dtype == np.float32 else 1e-12)


@pytest.mark.parametrize("quarter_turns", [1, 2, 3])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_quarter_turns_are_rot90(quarter_turns, layout):
    """Angle 90 k on a map equals angle 0 on np.rot90(map, -k) with the centre moved."""
    rng = np.random.default_rng(quarter_turns)
    features = rng.uniform(-1, 1, (1, 2, 7, 9))
    height, width = features.shape[2:]
    boxes = random_rotated_boxes(rng, 1, height, width, 1.0, 20)
    boxes[:, 5] = 90.0 * quarter_turns
    turned = np.ascontiguousarray(np.rot90(features, -quarter_turns, axes=(2, 3)))
    cx, cy = boxes[:, 1], boxes[:, 2]
    moved = boxes.copy()
    moved[:, 5] = 0.0
    moved[:, 1], moved[:, 2] = {1: (height - cy, cx), 2: (width - cx, height - cy),
                                3: (cy, width - cx)}[quarter_turns]
    result = roi_align_rotated(to_layout(features, layout), boxes, (3, 2), 1.0, 2, layout=layout)
    expected = roi_align_rotated(to_layout(turned, layout), moved, (3, 2), 1.0, 2, layout=layout)
    np.testing.assert_allclose(result, expected, rtol=0, atol=1e-12)


# mmcv's tests/test_ops/test_roi_align_rotated.py (open-mmlab/mmcv at commit
# 0afc8908caf3ec44f9ab631ad10f91d7a1a0f2a0): inputs, outputs and the gradient of
# output.sum(), for roi_align_rotated(x, rois, (2, 2), 1.0, 2, aligned=True) (radians,
# counter-clockwise), checked there to atol 1e-3.
MMCV_INPUTS = [
    ([[[[1., 2.], [3., 4.]]]], [[0., 0.5, 0.5, 1., 1., 0]]),
    ([[[[1., 2.], [3., 4.]]]], [[0., 0.5, 0.5, 1., 1., np.pi / 2]]),
    ([[[[1., 2.], [3., 4.]], [[4., 3.], [2., 1.]]]], [[0., 0.5, 0.5, 1., 1., 0]]),
    ([[[[1., 2., 5., 6.], [3., 4., 7., 8.], [9., 10., 13., 14.], [11., 12., 15., 16.]]]],
     [[0., 1.5, 1.5, 3., 3., 0]]),
    ([[[[1., 2., 5., 6.], [3., 4., 7., 8.], [9., 10., 13., 14.], [11., 12., 15., 16.]]]],
     [[0., 1.5, 1.5, 3., 3., np.pi / 2]]),
]
_G4 = [[0.47265625, 0.42968750, 0.42968750, 0.04296875],
       [0.42968750, 0.39062500, 0.39062500, 0.03906250],
       [0.42968750, 0.39062500, 0.39062500, 0.03906250],
       [0.04296875, 0.03906250, 0.03906250, 0.00390625]]
MMCV_OUTPUTS = [
    ([[[[1.0, 1.25], [1.5, 1.75]]]], [[[[3.0625, 0.4375], [0.4375, 0.0625]]]]),
    ([[[[1.5, 1], [1.75, 1.25]]]], [[[[3.0625, 0.4375], [0.4375, 0.0625]]]]),
    ([[[[1.0, 1.25], [1.5, 1.75]], [[4.0, 3.75], [3.5, 3.25]]]],
     [[[[3.0625, 0.4375], [0.4375, 0.0625]], [[3.0625, 0.4375], [0.4375, 0.0625]]]]),
    ([[[[1.9375, 4.75], [7.5625, 10.375]]]], [[_G4]]),
    ([[[[7.5625, 1.9375], [10.375, 4.75]]]], [[_G4]]),
]


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("case", range(len(MMCV_INPUTS)))
def test_mmcv_expectations(case, dtype):
    features, rois = (np.array(v, dtype) for v in MMCV_INPUTS[case])
    expected, expected_grad = (np.array(v) for v in MMCV_OUTPUTS[case])
    params = dict(aligned=True, clockwise=False, angle_unit="radians")
    output = roi_align_rotated(features, rois, (2, 2), 1.0, 2, **params)
    grad = roi_align_rotated_backward(np.ones_like(output), rois, features.shape, (2, 2), 1.0, 2,
                                      **params)
    assert output.dtype == dtype and grad.dtype == dtype
    atol = 1e-3 if dtype == np.float16 else 1e-6
    np.testing.assert_allclose(output, expected, rtol=0, atol=atol)
    np.testing.assert_allclose(grad, expected_grad, rtol=0, atol=atol)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_backward_is_the_adjoint(mode, layout):
    """<forward(x), g> == <x, backward(g)>, and finite differences agree (forward is linear)."""
    rng = np.random.default_rng(11)
    features, boxes = random_case(rng, np.float64, 0.5, mode=mode, n_boxes=12)
    features, grad_shape = to_layout(features, layout), None
    params = dict(MODES[mode], layout=layout)
    output = roi_align_rotated(features, boxes, (3, 2), 0.5, -1, **params)
    grad = rng.uniform(-1, 1, output.shape)
    grad_input = roi_align_rotated_backward(grad, boxes, features.shape, (3, 2), 0.5, -1,
                                            **params)
    assert np.isclose(np.vdot(output, grad), np.vdot(features, grad_input), rtol=1e-12)
    direction = rng.uniform(-1, 1, features.shape)
    step = 1e-3
    plus = roi_align_rotated(features + step * direction, boxes, (3, 2), 0.5, -1, **params)
    minus = roi_align_rotated(features - step * direction, boxes, (3, 2), 0.5, -1, **params)
    numeric = np.vdot((plus - minus) / (2 * step), grad)
    assert np.isclose(numeric, np.vdot(direction, grad_input), rtol=1e-9)
    assert grad_shape is None


@pytest.mark.parametrize("angle", [0.0, 30.0, 90.0])
def test_huge_box_with_a_big_grid_is_fast(angle):
    """Work is bounded by the map: rows that miss it are skipped, runs found by bisection."""
    features = np.random.default_rng(0).uniform(0, 1, (1, 4, 20, 24))
    boxes = np.array([[0, 12.0, 10.0, 1e6, 8e5, angle]])
    start = time.perf_counter()
    fixed = roi_align_rotated(features, boxes, 7, 1.0, 3000)
    adaptive = roi_align_rotated(features, boxes, 7, 1.0, -1)
    grad = roi_align_rotated_backward(np.ones_like(fixed), boxes, features.shape, 7, 1.0, 3000)
    assert time.perf_counter() - start < 10
    assert np.isfinite(fixed).all() and np.isfinite(adaptive).all() and np.isfinite(grad).all()
    if angle == 0.0:
        corners = np.array([[0, 12.0 - 5e5, 10.0 - 4e5, 12.0 + 5e5, 10.0 + 4e5]])
        expected = roi_align(features, corners, 7, 1.0, 3000, aligned=True)
        np.testing.assert_allclose(fixed, expected, rtol=1e-9, atol=1e-15)


def test_huge_box_with_a_big_grid_matches_a_walk_of_the_grid():
    """A box just big enough for row bounds and bisection, against the reference's full walk."""
    rng = np.random.default_rng(5)
    features = rng.uniform(-1, 1, (1, 2, 6, 7)).astype(np.float32)
    boxes = np.array([[0, 3.0, 3.5, 40.0, 30.0, 25.0], [0, -5.0, 2.0, 30.0, 3.0, 100.0],
                      [0, 3.0, 3.0, 50.0, 50.0, -170.0]])
    result = roi_align_rotated(features, boxes, 2, 1.0, 40)
    expected = reference(features, boxes, 2, 1.0, 40, "detectron2", np.float32)
    np.testing.assert_array_equal(result, expected)
    grad = rng.uniform(-1, 1, result.shape).astype(np.float32)
    np.testing.assert_array_equal(
        roi_align_rotated_backward(grad, boxes, features.shape, 2, 1.0, 40),
        reference(features, boxes, 2, 1.0, 40, "detectron2", np.float32, grad_output=grad))


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_huge_boxes_take_time_bounded_by_the_map(dtype, layout):
    """Boxes up to 1e30 pixels, any angle, adaptive and fixed grids: rows outside the map's
    preimage are skipped and runs of samples the float type rounds together are taken at once
    (before, 1e12 took 47 s and 1e30 never ended; a half turn's float32 sine of 8.7e-8 let a
    bin's rounding pad through as rows)."""
    features = to_layout(np.random.default_rng(1).uniform(0, 1, (1, 3, 20, 24)).astype(dtype),
                         layout)
    start = time.perf_counter()
    for size in (1e8, 1e10, 1e12, 1e20, 1e30):
        for angle in (0.0, 30.0, 90.0, 137.0, 180.0):
            boxes = np.array([[0, 12.0, 10.0, size, 0.8 * size, angle],
                              [0, 3.3, 17.1, 0.5 * size, size, -angle],
                              [0, 0.0, 0.0, size, size, -angle]])
            for sampling_ratio in (-1, 5000):
                pooled = roi_align_rotated(features, boxes, 7, 1.0, sampling_ratio,
                                           layout=layout)
                grad = roi_align_rotated_backward(np.ones_like(pooled), boxes, features.shape,
                                                  7, 1.0, sampling_ratio, layout=layout)
                assert np.isfinite(pooled).all() and np.isfinite(grad).all()
    assert time.perf_counter() - start < 20


@pytest.mark.parametrize("size", [1e8, 1e10, 1e12])
def test_huge_axis_aligned_boxes_are_roi_align_in_float64(size):
    """Where both ops' float32 sample index rounds samples together (and with them whole runs
    of rows), angle 0 still agrees with roi_align's own walk of the axis-aligned box."""
    features = np.random.default_rng(2).uniform(0, 1, (1, 2, 20, 24))
    for cx, cy in ((12.0, 10.0), (3.3, 17.1), (-40.0, 5.0)):
        boxes = np.array([[0, cx, cy, size, 0.8 * size, 0.0]])
        corners = np.array([[0, cx - size / 2, cy - 0.4 * size, cx + size / 2, cy + 0.4 * size]])
        np.testing.assert_allclose(roi_align_rotated(features, boxes, 7, 1.0, -1),
                                   roi_align(features, corners, 7, 1.0, -1, aligned=True),
                                   rtol=1e-9, atol=0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_big_far_boxes_match_a_walk_of_the_grid(dtype):
    """Boxes centred far off the map and crossing it at random angles, grids past the small-
    axis walk: the row window (the map's preimage, padded for rounding) and the bisected runs
    keep every inside sample, bit for bit against the reference's full walk."""
    rng = np.random.default_rng(7)
    features = rng.uniform(-1, 1, (1, 2, 9, 11)).astype(dtype)
    n = 6
    angle = rng.uniform(-180, 180, n)
    distance = rng.uniform(50, 400, n)
    direction = rng.uniform(0, 2 * np.pi, n)
    cx = 5.5 + distance * np.cos(direction)
    cy = 4.5 + distance * np.sin(direction)
    side = 2 * distance + rng.uniform(5, 30, n)  # the box reaches the map
    boxes = np.column_stack([np.zeros(n), cx, cy, side, side * rng.uniform(0.5, 1, n), angle])
    result = roi_align_rotated(features, boxes, 2, 1.0, 24)
    expected = reference(features, boxes, 2, 1.0, 24, "detectron2", dtype)
    assert (expected != 0).any()
    np.testing.assert_array_equal(result, expected)
    grad = rng.uniform(-1, 1, result.shape).astype(dtype)
    np.testing.assert_array_equal(
        roi_align_rotated_backward(grad, boxes, features.shape, 2, 1.0, 24),
        reference(features, boxes, 2, 1.0, 24, "detectron2", dtype, grad_output=grad))


def test_degenerate_boxes():
    """A zero-size box samples its centre; mmcv's mode stretches it to 1x1; K = 0 works."""
    features = np.arange(2 * 5 * 6, dtype=np.float64).reshape(1, 2, 5, 6)
    point = np.array([[0, 2.5, 3.0, 0.0, 0.0, 37.0]])
    result = roi_align_rotated(features, point, 2, 1.0, 2)
    np.testing.assert_allclose(result[0, :, 0, 0], features[0, :, 2, 2] + 0.5 * 6, rtol=1e-14)
    assert (result == result[:, :, :1, :1]).all()
    negative = np.array([[0, 2.5, 3.0, -2.0, -1.0, 0.3]])
    np.testing.assert_array_equal(
        roi_align_rotated(features, negative, 2, 1.0, 2, aligned=False, clockwise=True,
                          angle_unit="radians"),
        reference(features, negative, 2, 1.0, 2, "mmcv"))
    empty = roi_align_rotated(features, np.zeros((0, 6)), 2)
    assert empty.shape == (0, 2, 2, 2)
    assert not roi_align_rotated_backward(np.zeros((0, 2, 2, 2)), np.zeros((0, 6)),
                                          features.shape, 2).any()


def test_outside_boxes_give_zeros():
    features = np.ones((1, 1, 4, 4))
    boxes = np.array([[0, 100.0, 100.0, 3.0, 3.0, 45.0]])
    assert not roi_align_rotated(features, boxes, 2).any()


@pytest.mark.skipif(not _runtime.OPENMP_ENABLED, reason="serial build")
@pytest.mark.parametrize("layout", LAYOUTS)
def test_any_thread_count_gives_the_same_bits(layout):
    rng = np.random.default_rng(9)
    features = to_layout(rng.uniform(-1, 1, (2, 64, 30, 40)).astype(np.float32), layout)
    boxes = random_rotated_boxes(rng, 2, 30, 40, 0.5, 60)
    outputs = [roi_align_rotated(features, boxes, 7, 0.5, 2, layout=layout, num_threads=n)
               for n in (1, 2, 3)]
    grads = [roi_align_rotated_backward(outputs[0], boxes, features.shape, 7, 0.5, 2,
                                        layout=layout, num_threads=n) for n in (1, 2, 3)]
    for other in outputs[1:]:
        np.testing.assert_array_equal(outputs[0], other)
    for other in grads[1:]:
        np.testing.assert_array_equal(grads[0], other)


def test_float16_strides_byte_order_and_out():
    rng = np.random.default_rng(2)
    features, boxes = random_case(rng, np.float32, 1.0)
    expected = roi_align_rotated(features, boxes, 3)
    half = roi_align_rotated(features.astype(np.float16), boxes, 3)
    assert half.dtype == np.float16
    np.testing.assert_array_equal(
        half, roi_align_rotated(features.astype(np.float16).astype(np.float32), boxes,
                                3).astype(np.float16))
    strided = np.zeros(features.shape[:3] + (2 * features.shape[3],), np.float32)[..., ::2]
    strided[...] = features
    np.testing.assert_array_equal(roi_align_rotated(strided, boxes, 3), expected)
    np.testing.assert_array_equal(roi_align_rotated(features.astype(">f4"), boxes, 3), expected)
    out = np.full(expected.shape, 7.0, np.float32)
    assert roi_align_rotated(features, boxes, 3, out=out) is out
    np.testing.assert_array_equal(out, expected)
    per_image = [boxes[boxes[:, 0] == b][:, 1:] for b in range(features.shape[0])]
    order = np.argsort(boxes[:, 0], kind="stable")
    np.testing.assert_array_equal(roi_align_rotated(features, per_image, 3), expected[order])
    one = roi_align_rotated(features[0], boxes[boxes[:, 0] == 0][:, 1:], 3)
    np.testing.assert_array_equal(one, expected[boxes[:, 0] == 0])


def test_angle_units_and_direction():
    """degrees vs radians, clockwise vs counter-clockwise."""
    rng = np.random.default_rng(4)
    features, boxes = random_case(rng, np.float64, 1.0)
    radians = boxes.copy()
    radians[:, 5] = np.deg2rad(boxes[:, 5])
    flipped = boxes.copy()
    flipped[:, 5] = -boxes[:, 5]
    base = roi_align_rotated(features, boxes, 3)
    np.testing.assert_allclose(roi_align_rotated(features, radians, 3, angle_unit="radians"),
                               base, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(roi_align_rotated(features, flipped, 3, clockwise=True), base)


def test_class():
    pool = RoIAlignRotated((3, 2), 0.5, 2, aligned=False, clockwise=True, angle_unit="radians",
                           layout="NHWC")
    assert repr(pool) == ("RoIAlignRotated(output_size=(3, 2), spatial_scale=0.5, "
                          "sampling_ratio=2, aligned=False, clockwise=True, "
                          "angle_unit='radians', layout='NHWC')")
    assert pickle.loads(pickle.dumps(pool)) == pool
    assert pool != RoIAlignRotated((3, 2), 0.5, 2, aligned=False, clockwise=True,
                                   angle_unit="radians")
    rng = np.random.default_rng(6)
    features, boxes = random_case(rng, np.float32, 0.5, mode="mmcv")
    nhwc = to_layout(features, "NHWC")
    params = dict(MODES["mmcv"], layout="NHWC")
    np.testing.assert_array_equal(pool(nhwc, boxes),
                                  roi_align_rotated(nhwc, boxes, (3, 2), 0.5, 2, **params))
    grad = np.ones((len(boxes), 3, 2, features.shape[1]), np.float32)
    np.testing.assert_array_equal(
        pool.backward(grad, boxes, nhwc.shape),
        roi_align_rotated_backward(grad, boxes, nhwc.shape, (3, 2), 0.5, 2, **params))
    with pytest.raises(TypeError):
        hash(pool)


@pytest.mark.parametrize("sampling_ratio", [2, 40, -1])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_packed_and_per_roi_kernels_agree_bit_for_bit(dtype, layout, sampling_ratio):
    """The packed channel-block kernels (many RoIs on channels-first maps) and the per-RoI
    ones give the same bits, and the reference's (where its loops are quick)."""
    rng = np.random.default_rng(8)
    features, boxes = random_case(rng, dtype, 0.5, channels=19, n_boxes=12)
    check = sampling_ratio != 40
    f = to_layout(features, layout)
    runs = {variant: _roi_align_rotated.forward(f, boxes, (2, 3), 0.5, sampling_ratio,
                                                layout=layout, variant=variant)
            for variant in ("per_roi", "packed")}
    np.testing.assert_array_equal(runs["per_roi"], runs["packed"])
    if check:
        np.testing.assert_array_equal(
            to_nchw(runs["packed"], layout),
            reference(features, boxes, (2, 3), 0.5, sampling_ratio, "detectron2", dtype))
    grad = rng.uniform(-1, 1, runs["packed"].shape).astype(dtype)
    grads = {variant: _roi_align_rotated.backward(grad, boxes, f.shape, (2, 3), 0.5,
                                                  sampling_ratio, layout=layout,
                                                  variant=variant, num_threads=2)
             for variant in ("per_roi", "packed")}
    np.testing.assert_array_equal(grads["per_roi"], grads["packed"])
    if check:
        np.testing.assert_array_equal(
            to_nchw(grads["packed"], layout),
            reference(features, boxes, (2, 3), 0.5, sampling_ratio, "detectron2", dtype,
                      grad_output=to_nchw(grad, layout)))
