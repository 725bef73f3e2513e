"""prroi_pool, prroi_pool_backward and PrRoIPool: exact values on bilinear maps, the loop
reference (tests/reference.py), mmcv's own test numbers, convergence of roi_align's sampling
grid to the exact integral, the box gradient against central finite differences, the
feature gradient's adjoint identity, layouts, dtypes, strides, out=, no boxes, threads, huge
boxes, the class."""

import pickle
import time

import numpy as np
import pytest

from reference import reference_prroi_pool
from roi_inputs import random_boxes, to_layout, to_nchw

from roialign_cy import (PrRoIPool, RoIPool, _plan, _runtime, prroi_pool, prroi_pool_backward,
                         roi_align)

DTYPES = [np.float32, np.float64]
LAYOUTS = ["NCHW", "NHWC"]
ATOL = {np.dtype(np.float32): 2e-5, np.dtype(np.float64): 1e-12}
GEOMETRIES = [(1.0, (3, 3)), (0.5, (2, 3)), (1 / 16, (3, 2)), (0.3, (2, 2)), (1.7, (7, 7))]

# mmcv's tests/test_ops/test_prroi_pool.py at commit 1917af534fa467cadcf11c60758e75409335c4a8
# (open-mmlab/mmcv): inputs, boxes, and the expected output, feature gradient and box
# gradient for output_size (2, 2), spatial_scale 1.0 and grad_output all ones (float32).
MMCV_CASES = [
    ([[[[1., 2.], [3., 4.]]]], [[0., 0., 0., 1., 1.]],
     [[[[1.75, 2.25], [2.75, 3.25]]]], [[[[1., 1.], [1., 1.]]]], [[0., 2., 4., 2., 4.]]),
    ([[[[1., 2.], [3., 4.]], [[4., 3.], [2., 1.]]]], [[0., 0., 0., 1., 1.]],
     [[[[1.75, 2.25], [2.75, 3.25]], [[3.25, 2.75], [2.25, 1.75]]]],
     [[[[1., 1.], [1., 1.]], [[1., 1.], [1., 1.]]]], [[0., 0., 0., 0., 0.]]),
    ([[[[1., 2., 5., 6.], [3., 4., 7., 8.], [9., 10., 13., 14.], [11., 12., 15., 16.]]]],
     [[0., 0., 0., 3., 3.]],
     [[[[3.75, 6.91666651], [10.08333302, 13.25]]]],
     [[[[0.11111111, 0.22222224, 0.22222222, 0.11111111],
        [0.22222224, 0.444444448, 0.44444448, 0.22222224],
        [0.22222224, 0.44444448, 0.44444448, 0.22222224],
        [0.11111111, 0.22222224, 0.22222224, 0.11111111]]]],
     [[0.0, 3.33333302, 6.66666603, 3.33333349, 6.66666698]]),
]


def random_case(rng, channels=3, n_images=3, dtype=np.float64, n_boxes=14, scale=1.0):
    """Random (N, C, H, W) features and mixed boxes (see roi_inputs.random_boxes)."""
    height, width = (int(v) for v in rng.integers(4, 11, size=2))
    features = rng.uniform(-1, 1, (n_images, channels, height, width))
    return features.astype(dtype), random_boxes(rng, n_images, height, width, scale, n_boxes)


# ---- forward -------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_matches_reference(dtype, layout):
    rng = np.random.default_rng([dtype == np.float32, layout == "NHWC", 7])
    for scale, size in GEOMETRIES:
        features, boxes = random_case(rng, dtype=dtype, scale=scale)
        got = to_nchw(prroi_pool(to_layout(features, layout), boxes, size, scale,
                                 layout=layout), layout)
        assert got.dtype == dtype and got.shape == (len(boxes), 3) + size
        expected = reference_prroi_pool(features, boxes, size, scale)
        np.testing.assert_allclose(got, expected, rtol=0, atol=ATOL[np.dtype(dtype)])


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("case", range(len(MMCV_CASES)))
def test_matches_mmcv_expected_numbers(case, layout):
    features, boxes, output, grad_input, grad_boxes = (np.array(a, np.float32)
                                                       for a in MMCV_CASES[case])
    got = prroi_pool(to_layout(features, layout), boxes, (2, 2), 1.0, layout=layout)
    np.testing.assert_allclose(to_nchw(got, layout), output, rtol=1e-6, atol=1e-6)
    grad, box_grad = prroi_pool_backward(np.ones_like(got), boxes, to_layout(features, layout).shape,
                                         (2, 2), 1.0, input=to_layout(features, layout),
                                         box_grad=True, layout=layout)
    np.testing.assert_allclose(grad if layout == "NCHW" else grad.transpose(0, 3, 1, 2),
                               grad_input, rtol=1e-6, atol=1e-6)
    assert box_grad.dtype == np.float32 and box_grad.shape == (1, 5)
    np.testing.assert_allclose(box_grad, grad_boxes, rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("dtype", DTYPES)
def test_bilinear_map_has_closed_form(dtype):
    """On f(y, x) = a + b x + c y + d x y inside the map, a bin's average is f at the
    bin's centre plus nothing: the average of x y over a rectangle is the product of the
    centres' coordinates (x and y are independent)."""
    height, width = 9, 11
    a, b, c, d = 0.5, 0.25, -0.75, 0.125
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    features = (a + b * x + c * y + d * x * y)[None, None].astype(dtype)
    boxes = np.array([[0, 0.0, 0.0, 10.0, 8.0], [0, 1.3, 2.1, 7.9, 6.2], [0, 3.0, 3.0, 3.5, 3.25],
                      [0, 0.25, 7.0, 9.75, 8.0]])
    got = prroi_pool(features, boxes, (3, 4))
    for k, (_, x1, y1, x2, y2) in enumerate(boxes):
        cx = x1 + (np.arange(4) + 0.5) * (x2 - x1) / 4
        cy = y1 + (np.arange(3) + 0.5) * (y2 - y1) / 3
        expected = a + b * cx[None] + c * cy[:, None] + d * cy[:, None] * cx[None]
        np.testing.assert_allclose(got[k, 0], expected, rtol=0,
                                   atol=1e-5 if dtype == np.float32 else 1e-13)


def test_border_falls_to_zero_and_inverted_boxes_pool_to_zero():
    features = np.ones((1, 1, 3, 3))
    # the interpolant falls linearly from 1 at the border pixel (x = 2) to 0 at x = 3
    got = prroi_pool(features, np.array([[0, 2.0, 0.0, 3.0, 2.0]]), 1)
    np.testing.assert_allclose(got[0, 0, 0, 0], 0.5, rtol=0, atol=1e-15)
    got = prroi_pool(features, np.array([[0, -1.0, 0.0, 0.0, 2.0]]), 1)  # left of the map
    np.testing.assert_allclose(got[0, 0, 0, 0], 0.5, rtol=0, atol=1e-15)
    got = prroi_pool(features, np.array([[0, 5.0, 5.0, 9.0, 9.0], [0, 2.0, 1.0, 1.0, 2.0],
                                         [0, 1.0, 1.0, 1.0, 2.0], [0, 1.0, 2.0, 2.0, 1.0]]), 2)
    np.testing.assert_array_equal(got, 0)
    grad, box_grad = prroi_pool_backward(np.ones_like(got), np.array(
        [[0, 5.0, 5.0, 9.0, 9.0], [0, 2.0, 1.0, 1.0, 2.0], [0, 1.0, 1.0, 1.0, 2.0],
         [0, 1.0, 2.0, 2.0, 1.0]]), features.shape, 2, input=features, box_grad=True)
    np.testing.assert_array_equal(grad, 0)
    np.testing.assert_array_equal(box_grad, 0)


@pytest.mark.parametrize("scale", [1.0, 0.5])
def test_roi_align_converges_to_it_inside_the_map(scale):
    """roi_align with aligned=False (corners x * spatial_scale, no offset; boxes at least one
    pixel wide, which legacy roi_align enforces) samples the same
    interpolant; a fine fixed grid's average converges to the exact integral."""
    rng = np.random.default_rng(3)
    features = rng.uniform(-1, 1, (2, 2, 12, 13))
    n = 20
    x1 = rng.uniform(0, 8, n)
    y1 = rng.uniform(0, 7, n)
    boxes = np.stack([rng.integers(0, 2, n), x1, y1, x1 + rng.uniform(1, 4, n),
                      y1 + rng.uniform(1, 4, n)], axis=1) / np.array([1, scale, scale, scale, scale])
    exact = prroi_pool(features, boxes, (3, 2), scale)
    sampled = roi_align(features, boxes, (3, 2), scale, 512, False)
    np.testing.assert_allclose(sampled, exact, rtol=0, atol=2e-5)


# ---- backward ------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_backward_matches_reference_and_is_the_adjoint(dtype, layout):
    rng = np.random.default_rng([5, dtype == np.float32, layout == "NHWC"])
    for scale, size in GEOMETRIES[:4]:
        features, boxes = random_case(rng, dtype=dtype, scale=scale)
        grad = rng.standard_normal((len(boxes), 3) + size).astype(dtype)
        _, expected = reference_prroi_pool(features, boxes, size, scale, grad_output=grad)
        got = prroi_pool_backward(to_layout(grad, layout), boxes,
                                  to_layout(features, layout).shape, size, scale, layout=layout)
        got = got if layout == "NCHW" else got.transpose(0, 3, 1, 2)
        assert got.dtype == dtype
        np.testing.assert_allclose(got, expected, rtol=0, atol=10 * ATOL[np.dtype(dtype)])
        if dtype == np.float64:  # <grad, P x> == <P^T grad, x>
            pooled = prroi_pool(features, boxes, size, scale)
            np.testing.assert_allclose(np.vdot(grad, pooled), np.vdot(got, features),
                                       rtol=1e-12)


def test_box_gradient_matches_central_differences():
    rng = np.random.default_rng(9)
    features = rng.uniform(-1, 1, (2, 3, 9, 10))
    boxes = np.array([[0, 1.3, 0.7, 6.1, 7.4], [1, -1.2, 2.3, 4.4, 9.6], [1, 2.2, 1.1, 2.9, 1.8],
                      [0, 6.6, -0.4, 11.3, 3.3]])
    for scale, size in ((1.0, (2, 3)), (0.5, (3, 3))):
        b = boxes.copy()
        b[:, 1:] /= scale
        grad = rng.standard_normal((len(b), 3) + size)
        _, box_grad = prroi_pool_backward(grad, b, features.shape, size, scale, input=features,
                                          box_grad=True)
        assert box_grad.shape == (len(b), 5)
        np.testing.assert_array_equal(box_grad[:, 0], 0)
        h = 1e-6 / scale
        for k in range(len(b)):
            for col in range(1, 5):
                plus, minus = b.copy(), b.copy()
                plus[k, col] += h
                minus[k, col] -= h
                numeric = np.vdot(grad, prroi_pool(features, plus, size, scale)
                                  - prroi_pool(features, minus, size, scale)) / (2 * h)
                np.testing.assert_allclose(box_grad[k, col], numeric, rtol=1e-6, atol=1e-7)


def test_box_grad_needs_input():
    with pytest.raises(ValueError, match="input"):
        prroi_pool_backward(np.ones((1, 1, 2, 2)), np.array([[0, 0, 0, 1, 1.0]]), (1, 1, 4, 4),
                            2, box_grad=True)
    with pytest.raises(ValueError, match="input must have shape"):
        prroi_pool_backward(np.ones((1, 1, 2, 2)), np.array([[0, 0, 0, 1, 1.0]]), (1, 1, 4, 4),
                            2, input=np.ones((1, 1, 4, 5)), box_grad=True)
    with pytest.raises(TypeError, match="box_grad"):
        prroi_pool_backward(np.ones((1, 1, 2, 2)), np.array([[0, 0, 0, 1, 1.0]]), (1, 1, 4, 4),
                            2, box_grad="yes")


# ---- forms, threads, limits ----------------------------------------------------------------------


@pytest.mark.parametrize("layout", LAYOUTS)
def test_float16_strides_byte_order_out_and_no_boxes(layout):
    rng = np.random.default_rng(4)
    features, boxes = random_case(rng, dtype=np.float32)
    features = to_layout(features, layout)
    expected = prroi_pool(features, boxes, 2, layout=layout)
    for form in (features.astype(">f4"), np.asfortranarray(features),
                 features[..., ::-1][..., ::-1]):
        np.testing.assert_array_equal(prroi_pool(form, boxes, 2, layout=layout), expected)
    half = prroi_pool(features.astype(np.float16), boxes, 2, layout=layout)
    assert half.dtype == np.float16
    out = np.full(expected.shape[::-1], np.nan, np.float32).T
    assert prroi_pool(features, boxes, 2, layout=layout, out=out) is out
    np.testing.assert_array_equal(out, expected)
    grad = rng.standard_normal(expected.shape).astype(np.float32)
    expected_grad = prroi_pool_backward(grad, boxes, features.shape, 2, layout=layout)
    grad_out = np.full(features.shape, 5.0, np.float32)
    assert prroi_pool_backward(grad, boxes, features.shape, 2, layout=layout,
                               out=grad_out) is grad_out
    np.testing.assert_array_equal(grad_out, expected_grad)
    half_grad, half_boxes = prroi_pool_backward(grad.astype(np.float16), boxes, features.shape,
                                                2, input=features, box_grad=True, layout=layout)
    assert half_grad.dtype == half_boxes.dtype == np.float16
    store = np.zeros(features.size + expected.size, np.float32)
    shared = store[:features.size].reshape(features.shape)
    shared[...] = features
    overlapping = store[features.size - 1:features.size - 1 + expected.size]
    with pytest.raises(ValueError, match=r"out overlaps an input \(input\)"):
        prroi_pool(shared, boxes, 2, layout=layout, out=overlapping.reshape(expected.shape))
    empty = prroi_pool(features, np.zeros((0, 5)), 2, layout=layout)
    assert empty.shape == ((0, 3, 2, 2) if layout == "NCHW" else (0, 2, 2, 3))
    grad0, boxes0 = prroi_pool_backward(empty, [np.zeros((0, 4))] * 3, features.shape, 2,
                                        input=features, box_grad=True, layout=layout)
    np.testing.assert_array_equal(grad0, 0)
    assert boxes0.shape == (0, 5)


def test_layouts_agree_bit_for_bit():
    rng = np.random.default_rng(14)
    features, boxes = random_case(rng, channels=5, dtype=np.float32)
    nchw = prroi_pool(features, boxes, (3, 2), 0.7)
    nhwc = prroi_pool(to_layout(features, "NHWC"), boxes, (3, 2), 0.7, layout="NHWC")
    np.testing.assert_array_equal(to_nchw(nhwc, "NHWC"), nchw)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_threads_give_bit_identical_results(layout):
    rng = np.random.default_rng(11)
    features, boxes = random_case(rng, channels=16, n_images=2, dtype=np.float32, n_boxes=300)
    features = to_layout(features, layout)
    pooled = prroi_pool(features, boxes, 3, 0.5, layout=layout, num_threads=1)
    grad = rng.standard_normal(pooled.shape).astype(np.float32)
    if _runtime.OPENMP_ENABLED and _plan.USABLE_CPUS > 1:
        assert _plan.team_size(3, grad.size) > 1
    grads = prroi_pool_backward(grad, boxes, features.shape, 3, 0.5, input=features,
                                box_grad=True, layout=layout, num_threads=1)
    for n in (2, 3):
        np.testing.assert_array_equal(
            prroi_pool(features, boxes, 3, 0.5, layout=layout, num_threads=n), pooled)
        again = prroi_pool_backward(grad, boxes, features.shape, 3, 0.5, input=features,
                                    box_grad=True, layout=layout, num_threads=n)
        np.testing.assert_array_equal(again[0], grads[0])
        np.testing.assert_array_equal(again[1], grads[1])


@pytest.mark.parametrize("dtype", DTYPES)
def test_huge_boxes_take_bounded_time(dtype):
    """A bin reads only the map pixels it covers: a box a million times the map costs what
    the map costs."""
    features = np.ones((1, 2, 30, 40), dtype)
    big = np.finfo(dtype).max / 4
    boxes = np.array([[0, -1e6, -1e6, 1e6, 1e6], [0, -big, -big, big, big],
                      [0, 0.0, 0.0, 1e30, 1e30], [0, -1e30, 5.0, 10.0, 6.0]])
    start = time.perf_counter()
    pooled = prroi_pool(features, boxes, 7)
    grad, box_grad = prroi_pool_backward(np.ones_like(pooled), boxes, features.shape, 7,
                                         input=features, box_grad=True)
    assert time.perf_counter() - start < 2.0
    assert np.all(np.isfinite(pooled)) and np.all(np.isfinite(grad))
    assert np.all(np.isfinite(box_grad))
    # the whole map (plus its falling border) over a box of 4e12 square pixels: about 0
    assert 0 <= pooled[0].max() < 1e-6


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_boxes_refused_naming_the_row(bad):
    with pytest.raises(ValueError, match="boxes row 1"):
        prroi_pool(np.ones((1, 1, 4, 4)), np.array([[0, 0, 0, 1, 1.0], [0, 0, bad, 1, 1]]), 2)


# ---- the class -----------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", LAYOUTS)
def test_class_equals_functions(layout):
    rng = np.random.default_rng(12)
    features, boxes = random_case(rng, n_images=2, scale=0.5)
    features = to_layout(features, layout)
    layer = PrRoIPool((3, 2), 0.5, layout=layout)
    expected = prroi_pool(features, boxes, (3, 2), 0.5, layout=layout)
    np.testing.assert_array_equal(layer(features, boxes), expected)
    grad = rng.standard_normal(expected.shape)
    expected_grads = prroi_pool_backward(grad, boxes, features.shape, (3, 2), 0.5,
                                         input=features, box_grad=True, layout=layout)
    got = layer.backward(grad, boxes, features.shape, input=features, box_grad=True)
    np.testing.assert_array_equal(got[0], expected_grads[0])
    np.testing.assert_array_equal(got[1], expected_grads[1])
    np.testing.assert_array_equal(layer.backward(grad, boxes, features.shape), expected_grads[0])


def test_repr_equality_pickle():
    assert repr(PrRoIPool(5, 0.25)) == ("PrRoIPool(output_size=(5, 5), spatial_scale=0.25, "
                                        "layout='NCHW')")
    layer = PrRoIPool((2, 3), 0.125, layout="NHWC")
    assert eval(repr(layer), {"PrRoIPool": PrRoIPool}) == layer
    assert PrRoIPool(3, 0.5) == PrRoIPool((3, 3), 0.5)
    for other in (PrRoIPool(3, 0.25), PrRoIPool(3, 0.5, layout="NHWC"), RoIPool(3, 0.5)):
        assert PrRoIPool(3, 0.5) != other
    with pytest.raises(TypeError):
        hash(PrRoIPool(3))
    copy = pickle.loads(pickle.dumps(layer))
    assert copy == layer and copy is not layer
    with pytest.raises(TypeError):
        PrRoIPool(2, 1.0, "NHWC")  # type: ignore[misc]
    with pytest.raises(ValueError, match="output_size"):
        PrRoIPool(0)
