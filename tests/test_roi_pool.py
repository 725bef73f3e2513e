"""roi_pool, roi_pool_backward and RoIPool: torchvision's golden numbers and arg-max, the loop
reference, C rounding, empty bins, ties, NaN, the adjoint identity; and what RoIAlign
fixes: RoIPool's quantization does not follow sub-pixel motion."""


import numpy as np
import pytest

from golden import case_names, load_case
from reference import FLT_MAX, reference_roi_pool, round_half_away
from roi_inputs import assert_max_adjoint, random_boxes, to_layout, to_nchw

from roialign_cy import RoIPool, _roi_pool, roi_align, roi_pool, roi_pool_backward


# ---- roi_pool and roi_pool_backward: torchvision's golden numbers, a loop reference written from ---


LAYOUTS = ["NCHW", "NHWC"]


DTYPES = [np.float32, np.float64]




def pool_in(features_nchw, boxes, output_size, spatial_scale=1.0, layout="NCHW", **kwargs):
    """roi_pool of NCHW features handed over in `layout`, the result as (K, C, PH, PW)."""
    pooled = roi_pool(to_layout(features_nchw, layout), boxes, output_size, spatial_scale,
                      layout=layout, **kwargs)
    return to_nchw(pooled, layout)


def pool_backward_in(grad_output_nchw, boxes, features_nchw, output_size, spatial_scale=1.0,
                     layout="NCHW", **kwargs):
    """roi_pool_backward with NCHW arrays handed over in `layout`; the gradient as NCHW."""
    grad = roi_pool_backward(to_layout(grad_output_nchw, layout), boxes,
                             to_layout(features_nchw, layout), output_size, spatial_scale,
                             layout=layout, **kwargs)
    return to_nchw(grad, layout)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("name", case_names("roi_pool"))
def test_forward_matches_torchvision(name, layout):
    """The pooled values are elements of the input: they must be exactly torchvision's."""
    params, data = load_case(name)
    got = pool_in(data["input"], data["boxes"], tuple(params["output_size"]),
                  params["spatial_scale"], layout)
    assert got.dtype == data["input"].dtype
    np.testing.assert_array_equal(got, data["output"])


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("name", case_names("roi_pool_backward"))
def test_backward_matches_torchvision(name, layout):
    """Gradients sum in RoI order as in torchvision: exactly its autograd gradient."""
    params, data = load_case(name)
    got = pool_backward_in(data["grad_output"], data["boxes"], data["input"],
                           tuple(params["output_size"]), params["spatial_scale"], layout)
    assert got.dtype == data["input"].dtype
    np.testing.assert_array_equal(got, data["grad_input"])


@pytest.mark.parametrize("name", case_names("roi_pool") + case_names("roi_pool_backward"))
def test_reference_matches_torchvision(name):
    """The loop reference itself reproduces torchvision, so it can be trusted elsewhere."""
    params, data = load_case(name)
    size, scale = tuple(params["output_size"]), params["spatial_scale"]
    if "grad_output" in data:
        _, grad = reference_roi_pool(data["input"], data["boxes"], size, scale,
                                     data["grad_output"])
        np.testing.assert_allclose(grad, data["grad_input"], rtol=1e-6, atol=1e-6)
    else:
        out = reference_roi_pool(data["input"], data["boxes"], size, scale)
        np.testing.assert_array_equal(out, data["output"])


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("scale, size", [(1.0, (3, 3)), (0.5, (2, 4)), (1 / 16, (3, 2)),
                                         (0.25, (5, 5))])
def test_matches_reference(scale, size, dtype, layout):
    """Random features and boxes (outside, tiny, inverted, ...), forward and backward."""
    rng = np.random.default_rng([int(1 / scale), size[0], DTYPES.index(dtype)])
    features = rng.standard_normal((2, 3, 9, 11)).astype(dtype)
    boxes = random_boxes(rng, 2, 9, 11, scale, n_boxes=21)
    boxes[::3, 1:] = np.round(boxes[::3, 1:] * scale * 2) / (scale * 2)  # exact halves
    grad_output = rng.standard_normal((len(boxes), 3) + size).astype(dtype)
    expected, expected_grad = reference_roi_pool(features, boxes, size, scale, grad_output)
    got = pool_in(features, boxes, size, scale, layout)
    assert got.dtype == dtype
    np.testing.assert_array_equal(got, expected)
    grad = pool_backward_in(grad_output, boxes, features, size, scale, layout)
    assert grad.dtype == dtype
    np.testing.assert_allclose(grad, expected_grad, rtol=1e-6 if dtype == np.float32 else 1e-15,
                               atol=1e-6 if dtype == np.float32 else 1e-15)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("ramp, box, output_size, spatial_scale, expected", [
    # increasing map (v = 4 * row + col): the end rounds 0.5 -> 1 and 2.5 -> 3 (even: 0, 2)
    ("inc", [0, 0, 0, 0.5, 0.5], 1, 1.0, [[5]]),
    ("inc", [0, 0, 0, 2.5, 2.5], 1, 1.0, [[15]]),
    # decreasing map (v = 15 - 4 * row - col): the start rounds 0.5 -> 1, 2.5 -> 3, -0.5 -> -1
    ("dec", [0, 0.5, 0.5, 3, 3], 1, 1.0, [[10]]),
    ("dec", [0, 2.5, 2.5, 3, 3], 1, 1.0, [[0]]),
    ("dec", [0, 5, 5, 6, 6], 1, 0.5, [[0]]),
    ("dec", [0, -0.5, -0.5, 3, 3], 2, 1.0, [[15, 14], [11, 10]]),
    ("dec", [0, 1.5, 1.5, 3, 3], 1, 1.0, [[5]]),
])
def test_rounding_is_half_away_from_zero(ramp, box, output_size, spatial_scale, expected,
                                         layout):
    """Hand-checked against torchvision: C round(), not NumPy's round-half-to-even."""
    increasing = np.arange(16.0).reshape(1, 1, 4, 4)
    features = increasing if ramp == "inc" else 15 - increasing
    got = pool_in(features, np.array([box]), output_size, spatial_scale, layout)
    np.testing.assert_array_equal(got[0, 0], expected)


def test_rounding_helper_is_not_numpy_round():
    """The reference's rounding really differs from np.round on halves."""
    halves = [0.5, 1.5, 2.5, -0.5, -2.5, 0.49999999999999994]
    assert [round_half_away(v) for v in halves] == [1, 2, 3, -1, -3, 0]
    assert list(np.round(halves[:5])) == [0, 2, 2, -0, -2]


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_empty_bins_are_zero_without_gradient(dtype, layout):
    """Bins clipped away entirely give 0 (not -FLT_MAX) over negative features, no gradient."""
    features = np.full((1, 2, 5, 6), -2.0, dtype=dtype)
    boxes = np.array([[0, 10.0, 10.0, 14.0, 12.0],    # past the far corner
                      [0, -9.0, -9.0, -3.0, -4.0],    # before the origin
                      [0, -7.0, 1.0, 2.0, 3.0]])      # partly: left bins empty
    got = pool_in(features, boxes, (2, 3), 1.0, layout)
    np.testing.assert_array_equal(got[:2], 0)
    np.testing.assert_array_equal(got[2, :, :, 0], 0)
    np.testing.assert_array_equal(got[2, :, :, 2], -2)
    grad_output = np.ones(got.shape, dtype=dtype)
    grad = pool_backward_in(grad_output[:2], boxes[:2], features, (2, 3), 1.0, layout)
    np.testing.assert_array_equal(grad, 0)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_ties_first_maximum_wins(layout):
    """A constant map: the bin's first element (row-major) takes the gradient."""
    features = np.full((1, 1, 6, 6), 3.0)
    boxes = np.array([[0, 1.0, 2.0, 4.0, 5.0]])  # rows 2..5, cols 1..4, one bin
    grad = pool_backward_in(np.ones((1, 1, 1, 1)), boxes, features, 1, 1.0, layout)
    expected = np.zeros((6, 6))
    expected[2, 1] = 1.0
    np.testing.assert_array_equal(grad[0, 0], expected)

    rng = np.random.default_rng(21)
    features = rng.integers(0, 3, (2, 3, 8, 9)).astype(np.float64)  # ties everywhere
    boxes = random_boxes(rng, 2, 8, 9, 1.0, n_boxes=21)
    grad_output = rng.standard_normal((21, 3, 3, 2))
    _, expected = reference_roi_pool(features, boxes, (3, 2), 1.0, grad_output)
    got = pool_backward_in(grad_output, boxes, features, (3, 2), 1.0, layout)
    np.testing.assert_allclose(got, expected, rtol=1e-15, atol=1e-15)


@pytest.mark.parametrize("build", ["baseline", None])
@pytest.mark.parametrize("variant", ["per_roi", "packed"])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_ties_in_every_channel_block(layout, variant, build):
    """float32 ties across the register-blocked widths of the channel loops (43 channels:
    a block of 4 vectors, one vector, 3 scalars; the packed variant pads to 48): the value,
    the arg-max and the gradient of the first maximum, as the loop reference gives them."""
    rng = np.random.default_rng(43)
    features = rng.integers(-2, 2, (2, 43, 9, 11)).astype(np.float32)  # ties everywhere
    boxes = random_boxes(rng, 2, 9, 11, 1.0, n_boxes=30)
    grad_output = rng.integers(1, 4, (30, 43, 3, 2)).astype(np.float32)
    pooled_ref, grad_ref = reference_roi_pool(features, boxes, (3, 2), 1.0, grad_output)
    pooled, argmax = _roi_pool.forward(to_layout(features, layout), boxes, (3, 2), 1.0,
                                       layout=layout, return_argmax=True, variant=variant,
                                       build=build)
    np.testing.assert_array_equal(to_nchw(pooled, layout), pooled_ref)
    for argmax_given in (None, argmax):
        grad = _roi_pool.backward(to_layout(grad_output, layout), boxes,
                                  to_layout(features, layout), (3, 2), 1.0, layout=layout,
                                  argmax=argmax_given, variant=variant, build=build)
        np.testing.assert_array_equal(to_nchw(grad, layout), grad_ref)  # integers: exact


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_nan_is_never_the_maximum(dtype, layout):
    """Strict > from -FLT_MAX: NaN never wins; an all-NaN bin gives -FLT_MAX and no gradient."""
    features = np.full((1, 1, 4, 4), np.nan, dtype=dtype)
    features[0, 0, 3, 3] = -5.0
    features[0, 0, 0, 1] = 7.0
    boxes = np.array([[0, 0.0, 0.0, 3.0, 3.0]])
    got = pool_in(features, boxes, 2, 1.0, layout)  # checked against torchvision
    np.testing.assert_array_equal(got[0, 0], np.array([[7.0, -FLT_MAX], [-FLT_MAX, -5.0]],
                                                      dtype=dtype))
    grad = pool_backward_in(np.ones((1, 1, 2, 2), dtype), boxes, features, 2, 1.0, layout)
    expected = np.zeros((4, 4))
    expected[0, 1] = expected[3, 3] = 1.0
    np.testing.assert_array_equal(grad[0, 0], expected)


def test_values_below_minus_flt_max_are_never_chosen():
    """float64 values under -FLT_MAX lose to torchvision's start value, as in torchvision."""
    features = np.full((1, 1, 4, 4), -1e300)
    boxes = np.array([[0, 0.0, 0.0, 3.0, 3.0]])
    np.testing.assert_array_equal(roi_pool(features, boxes, 1), -FLT_MAX)
    np.testing.assert_array_equal(roi_pool_backward(np.ones((1, 1, 1, 1)), boxes, features, 1),
                                  0)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("ties", [False, True])
def test_adjoint_identity_at_the_point(ties, layout):
    """<roi_pool(x), g> == <x, roi_pool_backward(g, input=x)> for finite x.

    Each non-empty bin outputs x[arg-max] and sends g to that element; an empty bin outputs
    0 and sends nothing, so it adds 0 to both sides. (It fails only for a non-empty bin with
    no element above -FLT_MAX, see the test above.) It does not hold with the arg-max taken
    at x and another point y, which the last assertion checks.
    """
    rng = np.random.default_rng(int(ties))
    shape = (3, 4, 10, 12)
    features = (rng.integers(-2, 3, shape) if ties else rng.standard_normal(shape)) * 1.0
    features = to_layout(features, layout)
    boxes = random_boxes(rng, 3, 10, 12, 0.5, n_boxes=42)
    kwargs = dict(output_size=(3, 4), spatial_scale=0.5, layout=layout)
    pooled = roi_pool(features, boxes, **kwargs)
    assert (pooled == 0).any()  # some empty bins take part
    grad_output = rng.standard_normal(pooled.shape)
    grad = roi_pool_backward(grad_output, boxes, features, **kwargs)
    assert_max_adjoint(lambda x: roi_pool(x, boxes, **kwargs), features, grad_output, grad, rng)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_float16_in_float16_out(layout):
    """float16 in, float16 out: forward exactly the inputs' elements, backward rounded once."""
    rng = np.random.default_rng(4)
    features = rng.standard_normal((2, 3, 8, 9)).astype(np.float16)
    boxes = random_boxes(rng, 2, 8, 9, 1.0, n_boxes=12)
    got = pool_in(features, boxes, (2, 3), 1.0, layout)
    assert got.dtype == np.float16
    np.testing.assert_array_equal(got, reference_roi_pool(features.astype(np.float32), boxes,
                                                          (2, 3)))
    grad_output = rng.standard_normal(got.shape).astype(np.float16)
    grad = pool_backward_in(grad_output, boxes, features, (2, 3), 1.0, layout)
    assert grad.dtype == np.float16
    single = pool_backward_in(grad_output.astype(np.float32), boxes, features.astype(np.float32),
                              (2, 3), 1.0, layout)
    np.testing.assert_array_equal(grad, single.astype(np.float16))


@pytest.mark.parametrize("layout", LAYOUTS)
def test_no_boxes(layout):
    """K = 0: an empty pooled array and an all-zero gradient (out= overwritten)."""
    features = to_layout(np.ones((2, 3, 5, 6), dtype=np.float32), layout)
    pooled = roi_pool(features, np.zeros((0, 5)), (2, 4), layout=layout)
    assert pooled.shape == ((0, 3, 2, 4) if layout == "NCHW" else (0, 2, 4, 3))
    assert pooled.dtype == np.float32
    out = np.full(features.shape, 5.0, np.float32)
    grad = roi_pool_backward(pooled, [np.zeros((0, 4))] * 2, features, (2, 4), layout=layout,
                             out=out)
    assert grad is out
    np.testing.assert_array_equal(out, 0)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_backward_out_in_place(layout):
    """out= is overwritten, not added to, and returned; also when not C-contiguous."""
    rng = np.random.default_rng(8)
    features = to_layout(rng.standard_normal((2, 3, 7, 8)), layout)
    boxes = random_boxes(rng, 2, 7, 8, 1.0, n_boxes=14)
    grad_output = rng.standard_normal(roi_pool(features, boxes, 3, layout=layout).shape)
    expected = roi_pool_backward(grad_output, boxes, features, 3, layout=layout)
    assert np.count_nonzero(expected) > 0
    for out in (np.full(features.shape, np.nan), np.full(features.shape[::-1], 2.0).T):
        assert roi_pool_backward(grad_output, boxes, features, 3, layout=layout, out=out) is out
        np.testing.assert_array_equal(out, expected)


def test_backward_needs_input():
    """The arg-max is found from the features: input=None is refused, naming it."""
    with pytest.raises(ValueError, match="input"):
        roi_pool_backward(np.ones((1, 1, 1, 1)), np.array([[0, 0.0, 0.0, 2.0, 2.0]]), None, 1)


def argmax_to_nchw(argmax, layout):
    """Arg-max indices in `layout` as (K, C, PH, PW)."""
    return argmax if layout == "NCHW" else np.moveaxis(argmax, -1, 1)


@pytest.mark.parametrize("variant", ["per_roi", "packed"])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("name", case_names("roi_pool"))
def test_argmax_matches_torchvision(name, layout, variant):
    """The indices are torchvision's op's own (y * W + x, -1 for an empty bin), both kernels."""
    params, data = load_case(name)
    size, scale = tuple(params["output_size"]), params["spatial_scale"]
    pooled, argmax = _roi_pool.forward(to_layout(data["input"], layout), data["boxes"], size,
                                       scale, layout=layout, return_argmax=True,
                                       variant=variant)
    assert argmax.dtype == np.int32 and argmax.shape == pooled.shape
    np.testing.assert_array_equal(argmax_to_nchw(argmax, layout), data["argmax"])
    np.testing.assert_array_equal(to_nchw(pooled, layout), data["output"])


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("name", case_names("roi_pool_backward"))
def test_backward_from_argmax_matches_torchvision(name, layout):
    """Handed the forward's indices, the backward gives torchvision's gradient exactly, and
    never reads the features (NaN features change nothing)."""
    params, data = load_case(name)
    size, scale = tuple(params["output_size"]), params["spatial_scale"]
    features = to_layout(data["input"], layout)
    _, argmax = roi_pool(features, data["boxes"], size, scale, layout=layout,
                         return_argmax=True)
    grad_output = to_layout(data["grad_output"], layout)
    got = roi_pool_backward(grad_output, data["boxes"], np.full_like(features, np.nan), size,
                            scale, layout=layout, argmax=argmax)
    np.testing.assert_array_equal(to_nchw(got, layout), data["grad_input"])


@pytest.mark.parametrize("layout", LAYOUTS)
def test_argmax_with_no_boxes_and_float16(layout):
    features = to_layout(np.arange(2 * 3 * 5 * 6, dtype=np.float16).reshape(2, 3, 5, 6), layout)
    pooled, argmax = roi_pool(features, np.zeros((0, 5)), (2, 4), layout=layout,
                              return_argmax=True)
    assert pooled.shape == argmax.shape and argmax.size == 0
    boxes = np.array([[1, 0, 0, 5, 4]])
    pooled, argmax = roi_pool(features, boxes, 1, layout=layout, return_argmax=True)
    assert pooled.dtype == np.float16
    assert argmax.ravel().tolist() == [4 * 6 + 5] * 3  # the bottom-right pixel, every channel
    grad = roi_pool_backward(np.ones_like(pooled), boxes, features, 1, layout=layout,
                             argmax=argmax)
    assert grad.dtype == np.float16 and grad.sum() == 3 and grad.ravel().max() == 1


@pytest.mark.parametrize("argmax, error, message", [
    (np.zeros((1, 1, 1, 1), np.float32), TypeError, "argmax must hold integers"),
    (np.zeros((1, 1, 2, 1), np.int64), ValueError, r"argmax must have grad_output's shape"),
    (np.full((1, 1, 1, 1), -2), ValueError, r"argmax holds -2, outside \[-1, 16\)"),
    (np.full((1, 1, 1, 1), 16), ValueError, r"argmax holds 16, outside \[-1, 16\)"),
    (np.full((1, 1, 1, 1), 2**63, np.uint64), ValueError, "outside"),
])
def test_bad_argmax_is_refused(argmax, error, message):
    """Indices decide where the backward writes: anything out of the map is refused."""
    features = np.zeros((1, 1, 4, 4), np.float32)
    with pytest.raises(error, match=message):
        roi_pool_backward(np.ones((1, 1, 1, 1), np.float32), np.array([[0, 0, 0, 2, 2]]),
                          features, 1, argmax=argmax)


def test_argmax_needs_a_map_int32_can_index():
    """Indices are int32 like torchvision's: a map of 2**31 pixels or more is refused
    (checked from the shape alone: a broadcast view, nothing allocated)."""
    huge = np.broadcast_to(np.float32(0), (1, 1, 46341, 46341))
    with pytest.raises(ValueError, match="return_argmax: arg-max indices are int32"):
        roi_pool(huge, np.array([[0, 0, 0, 2, 2]]), 1, return_argmax=True)
    with pytest.raises(ValueError, match="argmax: arg-max indices are int32"):
        roi_pool_backward(np.ones((1, 1, 1, 1), np.float32), np.array([[0, 0, 0, 2, 2]]), huge,
                          1, argmax=np.zeros((1, 1, 1, 1), np.int32))


def test_argmax_index_is_within_the_channel_of_its_image():
    """An index names a pixel of the RoI's own image and channel; -1 sends nothing."""
    features = np.zeros((2, 2, 4, 4), np.float32)
    argmax = np.array([[[[15]], [[-1]]]])
    grad = roi_pool_backward(np.full((1, 2, 1, 1), 7.0, np.float32),
                             np.array([[1, 0, 0, 2, 2]]), features, 1, argmax=argmax)
    expected = np.zeros_like(features)
    expected[1, 0, 3, 3] = 7.0
    np.testing.assert_array_equal(grad, expected)


# ---- What RoIAlign fixes: RoIPool's quantization does not follow sub-pixel motion, RoIAlign does. ---


SIZE = 64


def smooth_map(kind, shift):
    """A (1, 1, 64, 64) float64 map f(y - shift, x - shift): its content moved by +shift px."""
    y, x = np.mgrid[0:SIZE, 0:SIZE].astype(np.float64)
    y, x = y - shift, x - shift
    if kind == "gaussian":
        values = np.exp(-((y - 30.0) ** 2 + (x - 34.0) ** 2) / (2 * 8.0**2))
    else:  # a 2-D sinusoid, wavelengths 24 and 32 px
        values = np.sin(2 * np.pi * x / 24) * np.cos(2 * np.pi * y / 32)
    return values[np.newaxis, np.newaxis]


def interior_boxes(n_boxes=60, seed=0):
    """(K, 5) boxes of 8..24 px, kept 8 px inside the map even after a 2 px shift."""
    rng = np.random.default_rng(seed)
    corner = rng.uniform(8, 30, (n_boxes, 2))
    return np.column_stack([np.zeros(n_boxes), corner, corner + rng.uniform(8, 24, (n_boxes, 2))])


def pooled_change(kind, shift, pool):
    """|pool(moved map, moved boxes) - pool(map, boxes)| for every output element."""
    boxes = interior_boxes()
    moved = boxes.copy()
    moved[:, 1:] += shift
    return np.abs(pool(smooth_map(kind, shift), moved) - pool(smooth_map(kind, 0.0), boxes))


def align_avg(features, boxes):
    """RoIAlign 7x7, 2x2 samples per bin, pixel-centre convention."""
    return roi_align(features, boxes, 7, 1.0, 2, True)


def align_max(features, boxes):
    """RoIAlign 7x7, max of an adaptive grid of samples."""
    return roi_align(features, boxes, 7, 1.0, -1, True, mode="max")


def pool_7x7(features, boxes):
    """RoIPool 7x7."""
    return roi_pool(features, boxes, 7, 1.0)


@pytest.mark.parametrize("align", [align_avg, align_max], ids=["avg", "max"])
@pytest.mark.parametrize("shift", [0.3, 0.5, 0.7])
@pytest.mark.parametrize("kind", ["gaussian", "sinusoid"])
def test_roialign_follows_subpixel_shift_roipool_does_not(kind, shift, align):
    """Both maps have amplitude 1. Measured (0.3 px, gaussian): RoIAlign changes by about
    2e-3 at most and 2e-4 on average, RoIPool by about 7e-2 and 2e-2."""
    align_change = pooled_change(kind, shift, align)
    pool_change = pooled_change(kind, shift, pool_7x7)
    assert pool_change.mean() > 0.01  # RoIPool really moves: it does not follow
    assert align_change.mean() < 0.005  # RoIAlign hardly does
    assert align_change.mean() < 0.05 * pool_change.mean()
    assert align_change.max() < 0.2 * pool_change.max()


@pytest.mark.parametrize("shift", [1.0, 2.0])
@pytest.mark.parametrize("kind", ["gaussian", "sinusoid"])
def test_whole_pixel_shift_is_followed_by_both(kind, shift):
    """The control: a whole-pixel shift moves RoIPool's grid with the content, so both follow
    (RoIPool exactly), which is what makes the sub-pixel failure a quantization effect."""
    np.testing.assert_array_equal(pooled_change(kind, shift, pool_7x7), 0)
    assert pooled_change(kind, shift, align_avg).max() < 1e-12
    assert pooled_change(kind, shift, align_max).max() < 1e-12


def test_roipool_ignores_small_box_moves():
    """Moving only the boxes by 0.1 px along x: RoIPool (rounding) mostly does not see it,
    RoIAlign (no rounding) responds for every box."""
    features = smooth_map("gaussian", 0.0)
    boxes = interior_boxes()
    moved = boxes.copy()
    moved[:, [1, 3]] += 0.1
    pool_same = np.all(pool_7x7(features, moved) == pool_7x7(features, boxes), axis=(1, 2, 3))
    align_same = np.all(align_avg(features, moved) == align_avg(features, boxes), axis=(1, 2, 3))
    assert pool_same.mean() > 0.5
    assert not align_same.any()


# ---- RoIAlign and RoIPool: the functions with fixed parameters, repr, equality, pickle, and ----


def case(layout, seed=0):
    """Random (N=2, C=3, 9x10) features in `layout`, 12 mixed boxes and a matching gradient."""
    rng = np.random.default_rng(seed)
    features = to_layout(rng.standard_normal((2, 3, 9, 10)), layout)
    boxes = random_boxes(rng, 2, 9, 10, 0.5, n_boxes=12)
    return rng, features, boxes


@pytest.mark.parametrize("layout", LAYOUTS)
def test_roipool_equals_functions(layout):
    """Calling and .backward give exactly roi_pool / roi_pool_backward."""
    rng, features, boxes = case(layout, seed=1)
    layer = RoIPool((2, 3), spatial_scale=0.5, layout=layout)
    expected = roi_pool(features, boxes, (2, 3), 0.5, layout=layout)
    np.testing.assert_array_equal(layer(features, boxes), expected)
    assert not np.array_equal(RoIPool((2, 3), 1.0, layout=layout)(features, boxes), expected)
    grad_output = rng.standard_normal(expected.shape)
    expected_grad = roi_pool_backward(grad_output, boxes, features, (2, 3), 0.5, layout=layout)
    np.testing.assert_array_equal(layer.backward(grad_output, boxes, features), expected_grad)
    out = np.empty_like(features)
    assert layer.backward(grad_output, boxes, features, out=out, num_threads=1) is out
    np.testing.assert_array_equal(out, expected_grad)
    pooled, argmax = layer(features, boxes, return_argmax=True)
    np.testing.assert_array_equal(pooled, expected)
    np.testing.assert_array_equal(layer.backward(grad_output, boxes, features, argmax=argmax),
                                  expected_grad)
